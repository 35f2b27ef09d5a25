// The counsellors' console. Vanilla JS, no build step, no external resources (the page's CSP allows
// only this origin). Whatever a person or a counsellor wrote (messages, previews, notes, and anything
// else the API returns) is put in the page with textContent / createTextNode, never as HTML.
"use strict";
(() => {
  const API = "/api/console";
  const S = JSON.parse(document.getElementById("strings").textContent);
  const $ = (id) => document.getElementById(id);
  const RISKS = ["crisis", "high", "medium", "low"];
  const ROLES = ["counsellor", "supervisor", "admin"];
  const TICK_MS = 5000; // waiting times are updated this often
  const POLL_MS = 30000; // a safety net: events are best-effort, so the lists are refetched this often

  const st = {
    me: null, // {username, role, csrf_token, on_duty, limit, held}
    csrf: "",
    queue: [],
    queueAt: 0, // performance.now() when the queue was fetched
    overview: null,
    overviewAt: 0,
    current: null, // id of the conversation on screen
    conv: null, // its last fetched state
    rendered: { id: null, count: 0 }, // what the transcript shows
    ownReply: false, // the counsellor just sent a reply: the transcript goes to its bottom
    info: new Map(), // conversation id -> {risk, categories, channel, state}
    updated: new Set(), // held conversations with news not yet looked at
    crisisSeen: new Set(), // crises the alarm has already been raised for (once each)
    alarmed: new Set(), // crises whose alarm still stands: not yet taken, opened or dismissed
    alerts: new Set(), // conversations of my unanswered alerts
    handedOver: new Set(),
    actions: 0, // counts transfers and closes, before and after: a read begun before one ended is out of date
    lastCrisis: null,
    canned: [],
    outcomes: [],
    referrals: [],
    colleaguesKey: "", // the transfer picker's last list, as JSON: redrawn only when it changes
    accounts: [], // admins: the accounts as last fetched
    view: "console",
  };

  // -- small helpers ---------------------------------------------------------------------------------

  function fill(template, values) {
    return String(template).replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));
  }

  function el(tag, { cls, text, attrs } = {}, children = []) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    for (const c of children) if (c) e.append(c);
    return e;
  }

  // How a colleague is named on the page: the display name people read, else the username.
  function nameOf(display, username) {
    return String(display || "") || String(username || "");
  }

  function shortId(id) {
    return String(id || "").slice(0, 8);
  }

  function supervises() {
    return !!st.me && (st.me.role === "supervisor" || st.me.role === "admin");
  }

  function administers() {
    return !!st.me && st.me.role === "admin";
  }

  function duration(seconds) {
    const t = Math.max(0, Math.floor(seconds));
    if (t < 60) return fill(S.seconds, { s: t });
    if (t < 3600) return fill(S.minutes, { m: Math.floor(t / 60), s: String(t % 60).padStart(2, "0") });
    return fill(S.hours, { h: Math.floor(t / 3600), m: Math.floor((t % 3600) / 60) });
  }

  function time(iso, withDate = false) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return "";
    const opts = withDate
      ? { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" }
      : { hour: "2-digit", minute: "2-digit" };
    return d.toLocaleString("ja-JP", opts);
  }

  function riskBadge(risk) {
    const r = RISKS.includes(risk) ? risk : "low";
    const badge = el("span", { cls: "risk risk-" + r, attrs: { "data-risk": r } });
    badge.append(el("span", { cls: "visually-hidden", text: S.risk_prefix }), document.createTextNode(S["risk_" + r]));
    return badge;
  }

  function categoryLabel(c) {
    return c ? (S.categories[c] || c) : S.no_category;
  }

  function categoryTags(list) {
    const wrap = el("span", { cls: "cats" });
    for (const c of list || []) wrap.append(el("span", { cls: "cat", text: categoryLabel(c) }));
    return wrap;
  }

  function channelLabel(c) {
    return S.channels[c] || c || "";
  }

  function detailOf(data) {
    if (data && typeof data.detail === "string") return data.detail;
    if (data && Array.isArray(data.detail)) return data.detail.map((d) => d.msg || "").join(" ");
    return "";
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  // -- the API -----------------------------------------------------------------------------------------

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && st.csrf) headers["X-CSRF-Token"] = st.csrf; // on every unsafe request
    let res;
    try {
      res = await fetch(API + path, {
        method,
        headers,
        credentials: "same-origin",
        cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      return { ok: false, status: 0, data: { detail: S.network_error } };
    }
    let data = null;
    if (res.status !== 204) {
      try { data = await res.json(); } catch { data = null; }
    }
    if (res.status === 401 && path !== "/login" && st.me) {
      sessionEnded(S.session_expired);
    }
    return { ok: res.ok, status: res.status, data };
  }

  // -- views: login, password, the console ----------------------------------------------------------

  function showView(name) {
    show($("view-login"), name === "login");
    show($("view-password"), name === "password");
    show($("view-app"), name === "app");
    show($("account"), name !== "login");
    // On duty and notifications mean something only once the console itself is open.
    for (const id of ["duty-label", "notify-area"]) show($(id), name === "app");
    show($("live-status"), name === "app");
  }

  function showLogin(info = "") {
    showView("login");
    $("login-info").textContent = info;
    $("login-error").textContent = "";
    $("login-password").value = "";
    $("login-username").focus();
  }

  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const username = $("login-username").value.trim();
    const password = $("login-password").value;
    const error = $("login-error");
    error.textContent = "";
    $("login-info").textContent = "";
    if (!username || !password) {
      error.textContent = S.login_missing;
      return;
    }
    unlockAudio();
    $("login-submit").disabled = true;
    const r = await api("POST", "/login", { username, password });
    $("login-submit").disabled = false;
    if (r.ok) {
      $("login-password").value = "";
      st.csrf = r.data.csrf_token;
      await start();
      return;
    }
    error.textContent = r.status === 401 ? S.login_wrong : r.status === 429 ? S.login_wait
      : r.status === 0 ? S.network_error : S.login_failed;
    $("login-password").value = "";
    $("login-password").focus();
  });

  $("password-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = $("pw-error");
    error.textContent = "";
    const old = $("pw-old").value;
    const neu = $("pw-new").value;
    if (neu !== $("pw-confirm").value) { error.textContent = S.pw_mismatch; return; }
    if ([...neu].length < 12) { error.textContent = S.pw_too_short; return; }
    $("pw-submit").disabled = true;
    const r = await api("POST", "/password", { old, new: neu });
    $("pw-submit").disabled = false;
    if (r.ok) {
      for (const id of ["pw-old", "pw-new", "pw-confirm"]) $(id).value = "";
      await start();
      return;
    }
    error.textContent = r.status === 403 ? S.pw_old_wrong : r.status === 422 ? S.pw_too_short : S.pw_failed;
  });

  $("logout-btn").addEventListener("click", async () => {
    await api("POST", "/logout");
    sessionEnded(S.logged_out);
  });

  // Called after a login, a password change or a reload: who am I, and what to show.
  async function start() {
    const r = await api("GET", "/me");
    if (!r.ok) {
      st.me = null;
      showLogin();
      return;
    }
    st.me = r.data;
    st.csrf = r.data.csrf_token;
    renderAccount();
    if (st.me.must_change_password) {
      showView("password");
      $("pw-username").value = st.me.username;
      $("pw-old").focus();
      return;
    }
    showView("app");
    renderTabs();
    selectView("console");
    await loadReference();
    await refreshLists();
    connectLive();
    startTimers();
  }

  function sessionEnded(info) {
    st.me = null;
    st.csrf = "";
    stopLive();
    stopTimers();
    stopAlarm();
    st.current = null;
    st.conv = null;
    st.rendered = { id: null, count: 0 };
    st.queue = [];
    st.info.clear();
    st.updated.clear();
    st.crisisSeen.clear();
    st.handedOver.clear();
    $("queue-list").replaceChildren();
    $("held-list").replaceChildren();
    $("transcript").replaceChildren();
    $("notes-list").replaceChildren();
    $("reply").value = "";
    clearOneTime();
    st.accounts = [];
    accountRows.clear();
    $("accounts-body").replaceChildren();
    setAccountsMessage("");
    st.colleaguesKey = "";
    $("transfer-to").replaceChildren(el("option", { text: S.choose, attrs: { value: "" } }));
    show($("conv"), false);
    show($("tools"), false);
    delete $("tools").dataset.conversationId;
    show($("conv-placeholder"), true);
    show($("crisis-banner"), false);
    showLogin(info);
  }

  function renderWho() {
    const role = S["role_" + st.me.role] || st.me.role;
    $("who").textContent = st.me.display_name
      ? fill(S.who_named, { name: st.me.display_name, username: st.me.username, role })
      : fill(S.who, { username: st.me.username, role });
    $("name-current").textContent = st.me.display_name ? fill(S.name_current, { name: st.me.display_name }) : S.name_unset;
  }

  // -- my display name: what people read in greetings (never the username) ------------------------------

  function openNameForm(reason = "") {
    show($("name-form"), true);
    $("name-input").value = st.me.display_name || "";
    $("name-msg").textContent = reason;
    $("name-msg").classList.toggle("error", !!reason);
    $("name-input").focus();
  }
  $("name-btn").addEventListener("click", () => ($("name-form").hidden ? openNameForm() : show($("name-form"), false)));
  $("name-cancel").addEventListener("click", () => show($("name-form"), false));
  $("name-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = $("name-input").value.trim();
    if (!value) {
      $("name-msg").textContent = S.name_missing;
      $("name-msg").classList.add("error");
      return;
    }
    const r = await api("POST", "/me/display-name", { display_name: value });
    if (!r.ok) {
      $("name-msg").textContent = r.status === 422 ? S.name_invalid : fill(S.name_failed, { detail: detailOf(r.data) || r.status });
      $("name-msg").classList.add("error");
      return;
    }
    st.me.display_name = r.data.display_name;
    renderWho();
    show($("name-form"), false);
    flashMessage(fill(S.name_saved, { name: r.data.display_name }));
  });

  function renderAccount() {
    const me = st.me;
    renderWho();
    $("duty").checked = !!me.on_duty;
    renderNotifyButton();
  }

  let dutyPending = 0; // while a change is on its way, a refetched /me must not undo the box
  $("duty").addEventListener("change", async (e) => {
    const want = e.target.checked;
    dutyPending += 1;
    const r = await api("POST", "/duty", { on_duty: want });
    dutyPending -= 1;
    if (r.ok) {
      st.me.on_duty = r.data.on_duty;
    } else {
      e.target.checked = !want;
      flashMessage(S.duty_failed);
    }
  });

  // -- tabs ------------------------------------------------------------------------------------------------

  const TABS = [["tab-console", "console"], ["tab-supervisor", "supervisor"], ["tab-accounts", "accounts"]];

  function selectView(name) {
    if (name === "supervisor" && !supervises()) name = "console";
    if (name === "accounts" && !administers()) name = "console";
    // A one-time password is shown once: leaving the accounts view forgets it.
    if (name !== "accounts") clearOneTime();
    st.view = name;
    show($("console"), name === "console");
    show($("supervisor"), name === "supervisor");
    show($("accounts"), name === "accounts");
    for (const [id, v] of TABS) {
      if (v === name) $(id).setAttribute("aria-current", "page");
      else $(id).removeAttribute("aria-current");
    }
    if (name === "supervisor") {
      refreshOverview();
      refreshStats();
      refreshAudit();
    }
    if (name === "accounts") refreshAccounts();
  }
  for (const [id, v] of TABS) $(id).addEventListener("click", () => selectView(v));

  // The tabs a role may see; a role changed by an administrator takes effect at the next refetch.
  function renderTabs() {
    show($("tab-supervisor"), supervises());
    show($("tab-accounts"), administers());
    if ((st.view === "supervisor" && !supervises()) || (st.view === "accounts" && !administers())) selectView("console");
  }

  // -- reference data: canned replies, outcomes, the referral directory ---------------------------------

  async function loadReference() {
    const [c, r] = await Promise.all([api("GET", "/canned"), api("GET", "/referrals")]);
    if (c.ok) {
      st.canned = c.data.canned || [];
      st.outcomes = c.data.outcomes || [];
    }
    if (r.ok) st.referrals = r.data || [];
    const chips = $("canned-list");
    chips.replaceChildren();
    for (const item of st.canned) {
      const b = el("button", { cls: "chip", text: item.label, attrs: { type: "button", title: item.text } });
      b.addEventListener("click", () => insertCanned(String(item.text)));
      chips.append(b);
    }
    const select = $("close-outcome");
    select.replaceChildren(el("option", { text: S.choose, attrs: { value: "" } }));
    for (const o of st.outcomes) select.append(el("option", { text: o.label, attrs: { value: o.code } }));
    const refs = $("close-refs-list");
    refs.replaceChildren();
    for (const ref of st.referrals) {
      const id = "close-ref-" + ref.id;
      const box = el("input", { attrs: { type: "checkbox", id, value: ref.id } });
      refs.append(el("div", { cls: "check" }, [box, el("label", { text: ref.name + " " + ref.number, attrs: { for: id } })]));
    }
    renderReferrals(st.referrals);
  }

  // A canned reply: {name} is my display name (never the username: the person reads it); without one,
  // I am asked for it first. Sentences already in the draft are not inserted again, so that canned
  // replies combine without saying anything twice.
  function insertCanned(text) {
    if (text.includes("{name}") && !st.me.display_name) {
      openNameForm(S.name_needed);
      return;
    }
    const filled = fill(text, { name: st.me.display_name });
    const draft = $("reply").value;
    const fresh = sentencesOf(filled).filter((x) => !draft.includes(x));
    if (fresh.length) insertReply(fresh.join(""));
  }

  function sentencesOf(text) {
    return String(text).match(/[^。！？!?\n]+[。！？!?]*/g) || [];
  }

  function insertReply(text) {
    const box = $("reply");
    if (box.closest("[hidden]")) return;
    const start = box.selectionStart ?? box.value.length;
    const end = box.selectionEnd ?? box.value.length;
    box.setRangeText(text, start, end, "end");
    box.dispatchEvent(new Event("input", { bubbles: true }));
    box.focus();
  }

  let refTimer = null;
  $("ref-q").addEventListener("input", () => {
    clearTimeout(refTimer);
    refTimer = setTimeout(async () => {
      const q = $("ref-q").value.trim();
      const r = await api("GET", "/referrals?q=" + encodeURIComponent(q));
      if (r.ok) renderReferrals(r.data);
    }, 250);
  });

  function renderReferrals(list) {
    const ul = $("ref-results");
    ul.replaceChildren();
    if (!list.length) {
      ul.append(el("li", { cls: "empty", text: S.referrals_none }));
      return;
    }
    for (const ref of list) {
      const head = el("div", { cls: "ref-head" }, [
        el("strong", { text: ref.name }),
        document.createTextNode(" " + ref.number + " "),
        el("span", { cls: ref.open_now ? "open-now" : "closed-now", text: ref.open_now ? S.open_now : S.closed_now }),
      ]);
      const b = el("button", { cls: "btn btn-small", text: S.insert, attrs: { type: "button", "aria-label": S.insert + "：" + ref.name } });
      b.addEventListener("click", () => {
        insertReply(ref.line);
        // Given in a reply: ticked in the close form's referrals already (it can be unticked).
        const box = document.getElementById("close-ref-" + ref.id);
        if (box) box.checked = true;
      });
      ul.append(el("li", { cls: "ref", attrs: { "data-referral": ref.id } }, [
        head,
        el("div", { cls: "ref-for", text: ref.for + "（" + ref.hours + "）" }),
        b,
      ]));
    }
  }

  // -- the queue and my conversations ----------------------------------------------------------------

  let refreshing = null;
  async function refreshLists() {
    if (!st.me || st.me.must_change_password) return;
    if (refreshing) { refreshing.again = true; return; }
    refreshing = { again: false };
    try {
      const [q, me, alerts] = await Promise.all([api("GET", "/queue"), api("GET", "/me"), api("GET", "/alerts")]);
      if (me.ok && st.me) {
        const role = st.me.role;
        st.me = Object.assign(st.me, me.data);
        st.csrf = me.data.csrf_token;
        if (!dutyPending) $("duty").checked = !!me.data.on_duty;
        if (st.me.role !== role) {
          renderWho();
          renderTabs();
        }
      }
      if (q.ok && st.me) {
        st.queue = q.data;
        st.queueAt = performance.now();
        let fresh = null;
        for (const item of st.queue) {
          st.info.set(item.conversation_id, { risk: item.risk, categories: item.categories, channel: item.channel, state: "waiting" });
          if (item.risk === "crisis" && !st.crisisSeen.has(item.conversation_id)) {
            st.crisisSeen.add(item.conversation_id);
            fresh = fresh || item.conversation_id;
          }
        }
        renderQueue();
        // Crisis alerts addressed to me (supervisors on duty; counsellors on duty when none is).
        if (alerts.ok && Array.isArray(alerts.data)) {
          st.alerts = new Set(alerts.data.map((a) => a.conversation_id));
          for (const a of alerts.data) {
            if (!st.crisisSeen.has(a.conversation_id)) {
              st.crisisSeen.add(a.conversation_id);
              fresh = fresh || a.conversation_id;
            }
          }
        }
        if (fresh) alarm(fresh);
        settleAlarm();
      }
      renderHeld();
    } finally {
      const again = refreshing.again;
      refreshing = null;
      if (again) refreshLists();
    }
  }

  // The queue card's reason quotes the whole words it matched in the preview, as the transcript's
  // highlights do (wordBounds, widen); a lone kana is no quote (the kind of sign is said alone).
  function previewQuote(preview, reason) {
    const chars = Array.from(String(preview || ""));
    const span = Array.isArray(reason.span) ? reason.span : null;
    let quote = String(reason.matched || "");
    if (span) {
      let a = Math.max(0, Math.min(chars.length, Number(span[0]) | 0));
      let b = Math.max(0, Math.min(chars.length, Number(span[1]) | 0));
      if (b > a) [a, b] = widen(a, b, wordBounds(chars.join("")), chars.length);
      if (b > a) quote = chars.slice(a, b).join("").replace(/^[\s、。…]+|[\s、。…]+$/g, "");
    }
    if (/^[\u3040-\u30ff]?$/.test(quote)) quote = "";
    return { rule: reason.rule, matched: quote };
  }

  function renderQueue() {
    const ul = $("queue-list");
    const items = st.queue;
    $("queue-count").textContent = fill(S.queue_count, { n: items.length });
    show($("queue-empty"), items.length === 0);
    // Rebuilt from the API's order (most urgent first), reusing nothing: it is short.
    const focusedId = document.activeElement && document.activeElement.closest && document.activeElement.closest("#queue-list li")
      ? document.activeElement.closest("li").dataset.conversationId : null;
    const rows = [];
    for (const item of items) {
      const li = el("li", { cls: "queue-item risk-row-" + item.risk, attrs: { "data-conversation-id": item.conversation_id, "data-risk": item.risk } });
      if (item.conversation_id === st.current) li.classList.add("selected");
      const open = el("button", { cls: "queue-open", attrs: { type: "button" } });
      const top = el("span", { cls: "queue-top" }, [
        riskBadge(item.risk),
        categoryTags(item.categories),
        el("span", { cls: "channel", text: channelLabel(item.channel) }),
      ]);
      const wait = el("span", { cls: "wait", attrs: { "data-waiting": String(item.waiting_seconds) } });
      wait.textContent = fill(S.waiting_for, { time: duration(item.waiting_seconds) });
      // The most serious line they wrote (not the latest), and why it counts: what the person wrote is text only.
      const preview = el("span", { cls: "preview", text: item.preview });
      open.append(top, wait, preview);
      if (item.preview_reason) open.append(el("span", { cls: "preview-reason", text: reasonLabel(previewQuote(item.preview, item.preview_reason)) }));
      const presence = item.presence ? presenceBadge(item.presence) : null;
      if (presence) open.append(presence);
      const found = dialogueFlags(item.reasons || []);
      if (found.length) open.append(el("span", { cls: "queue-reasons", text: found.join("・") }));
      open.addEventListener("click", () => openConversation(item.conversation_id, { focus: true }));
      const claim = el("button", { cls: "btn btn-primary btn-small claim", text: S.claim, attrs: { type: "button", "aria-label": S.claim + "：" + S["risk_" + item.risk] + " " + duration(item.waiting_seconds) } });
      claim.addEventListener("click", () => claimConversation(item.conversation_id));
      li.append(open, claim);
      rows.push(li);
    }
    ul.replaceChildren(...rows);
    if (focusedId) {
      const again = ul.querySelector(`li[data-conversation-id="${CSS.escape(focusedId)}"] .queue-open`);
      if (again) again.focus();
    }
  }

  // Whether the person is there: connected, left, gone through the quick exit, blocked.
  function presenceBadge(p) {
    const state = String(p.state || "");
    const label = S.presence_short[state];
    if (!label) return null;
    return el("span", { cls: "presence presence-" + state, text: fill(label, { time: p.at ? time(p.at) : "" }), attrs: { "data-presence": state } });
  }

  function renderPresence(c) {
    const line = $("conv-presence");
    const p = c.presence;
    const state = p && p.state ? String(p.state) : "";
    const label = state && S.presence_long[state];
    line.textContent = label ? fill(label, { time: p.at ? time(p.at) : "" }) : "";
    line.className = "presence-line presence-" + (state || "none");
    line.dataset.presence = state;
    // A closed conversation says only that they went for good (its replies are not awaited any more).
    show(line, !!label && (c.state !== "closed" || state === "quick_exit" || state === "blocked"));
  }

  function tickWaits() {
    const extra = (performance.now() - st.queueAt) / 1000;
    for (const span of document.querySelectorAll("#queue-list .wait")) {
      const base = Number(span.dataset.waiting || 0);
      span.textContent = fill(S.waiting_for, { time: duration(base + extra) });
    }
    if (st.overview && st.view === "supervisor") {
      const longest = st.overview.waiting ? st.overview.longest_wait_seconds + (performance.now() - st.overviewAt) / 1000 : 0;
      $("ov-longest").textContent = st.overview.waiting ? duration(longest) : "—";
    }
  }

  function renderHeld() {
    const ul = $("held-list");
    const held = (st.me && st.me.held) || [];
    $("held-count").textContent = fill(S.queue_count, { n: held.length });
    show($("held-empty"), held.length === 0);
    for (const id of [...st.updated]) if (!held.includes(id)) st.updated.delete(id);
    const rows = held.map((id) => {
      const info = st.info.get(id) || {};
      const b = el("button", { cls: "held-open", attrs: { type: "button" } });
      if (info.risk) b.append(riskBadge(info.risk));
      b.append(el("span", { cls: "held-id", text: fill(S.conv_title, { id: shortId(id) }) }));
      if (info.categories) b.append(categoryTags(info.categories));
      if (st.updated.has(id)) b.append(el("span", { cls: "updated", text: S.held_updated }));
      b.addEventListener("click", () => openConversation(id, { focus: true }));
      const li = el("li", { cls: "held-item", attrs: { "data-conversation-id": id } }, [b]);
      if (id === st.current) li.classList.add("selected");
      return li;
    });
    ul.replaceChildren(...rows);
  }

  // Taking a conversation that is not a crisis while a crisis waits: said first, with a way to the crisis.
  function showClaimWarning(id, crisisId) {
    const box = $("claim-warning");
    $("claim-warning-text").textContent = S.claim_warning;
    box.dataset.conversationId = id;
    box.dataset.crisisId = crisisId;
    show(box, true);
    $("claim-warning-crisis").focus();
  }

  function hideClaimWarning() {
    const box = $("claim-warning");
    show(box, false);
    delete box.dataset.conversationId;
    delete box.dataset.crisisId;
  }

  $("claim-warning-crisis").addEventListener("click", () => {
    const id = $("claim-warning").dataset.crisisId;
    hideClaimWarning();
    if (id) openConversation(id, { focus: true });
  });
  $("claim-warning-anyway").addEventListener("click", () => {
    const id = $("claim-warning").dataset.conversationId;
    hideClaimWarning();
    if (id) claimConversation(id, { confirmed: true });
  });

  async function claimConversation(id, { confirmed = false } = {}) {
    unlockAudio();
    const risk = (st.queue.find((q) => q.conversation_id === id) || st.info.get(id) || {}).risk;
    const crisis = st.queue.find((q) => q.risk === "crisis" && q.conversation_id !== id);
    if (!confirmed && crisis && risk !== "crisis") {
      showClaimWarning(id, crisis.conversation_id);
      return;
    }
    hideClaimWarning();
    const r = await api("POST", `/conversations/${encodeURIComponent(id)}/claim`);
    if (r.ok) {
      st.updated.delete(id);
      await refreshLists();
      await openConversation(id, { focus: true, force: true });
      setConvMessage(S.claimed);
      return;
    }
    let text;
    const detail = detailOf(r.data);
    if (r.status === 409) {
      const full = /already have (\d+)/.exec(detail);
      if (full) text = fill(S.claim_full, { limit: full[1] });
      else if (/someone else/.test(detail)) text = S.claim_taken;
      else if (/no longer waiting/.test(detail)) text = S.claim_gone;
      else text = fill(S.claim_failed, { detail });
    } else {
      text = fill(S.claim_failed, { detail: detail || r.status });
    }
    if (st.current === id) setConvMessage(text, true);
    else flashMessage(text);
    refreshLists();
  }
  $("claim-btn").addEventListener("click", () => { if (st.current) claimConversation(st.current); });

  // Messages about actions: shown in the conversation pane when one is open, else in the live region.
  function setConvMessage(text, isError = false) {
    const p = $("conv-msg");
    p.textContent = text;
    p.classList.toggle("error", isError);
    // A message about an action is about that moment: it goes after a while, so that an old refusal is
    // not read as being about what the counsellor does next.
    clearTimeout(setConvMessage.timer);
    if (text) setConvMessage.timer = setTimeout(() => { if (p.textContent === text) setConvMessage(""); }, 20000);
  }

  function flashMessage(text) {
    const p = $("app-msg");
    p.textContent = text;
    clearTimeout(flashMessage.timer);
    flashMessage.timer = setTimeout(() => { p.textContent = ""; }, 15000);
  }

  // -- one conversation ---------------------------------------------------------------------------------

  let convLoading = null;
  async function openConversation(id, { focus = false, force = false } = {}) {
    const switching = st.current !== id;
    if (switching) {
      st.current = id;
      st.rendered = { id: null, count: 0 };
      setConvMessage("");
      $("reply").value = "";
      $("note-text").value = "";
      $("transfer-to").value = "";
      resetTransferButton();
      hideClaimWarning();
      if (st.view !== "console") selectView("console");
    }
    st.updated.delete(id);
    if (st.alarmed.delete(id)) settleAlarm();
    for (const li of document.querySelectorAll("#queue-list li, #held-list li")) {
      li.classList.toggle("selected", li.dataset.conversationId === id);
    }
    renderHeld();
    await loadConversation(id, force);
    if (focus && switching && st.current === id) $("conv-title").focus();
  }

  async function loadConversation(id, force = false) {
    if (convLoading && convLoading.id === id && !force) { convLoading.again = true; return; }
    const mine = { id, again: false };
    convLoading = mine;
    const actions = st.actions;
    try {
      const r = await api("GET", `/conversations/${encodeURIComponent(id)}`);
      if (st.current !== id) return;
      // A transfer or close happened while this read was on its way: what it says is from before.
      if (actions !== st.actions) { mine.again = true; return; }
      if (!r.ok) {
        if (r.status === 401) return;
        // Closed or transferred from here: a counsellor may not read it any more; keep what is shown.
        if (r.status === 403 && st.handedOver.has(id) && st.conv && st.conv.conversation_id === id) return;
        st.conv = null;
        show($("conv-placeholder"), false);
        show($("conv"), true);
        show($("tools"), false);
        delete $("tools").dataset.conversationId;
        show($("reply-form"), false);
        show($("claim-btn"), false);
        $("conv-title").textContent = fill(S.conv_title, { id: shortId(id) });
        $("conv-meta").replaceChildren();
        $("transcript").replaceChildren();
        st.rendered = { id: null, count: 0 };
        show($("conv-notice"), false);
        setConvMessage(r.status === 403 ? S.conv_forbidden : r.status === 404 ? S.conv_missing : S.conv_failed, true);
        return;
      }
      renderConversation(r.data);
    } finally {
      if (convLoading === mine) {
        convLoading = null;
        if (mine.again && st.current === id) loadConversation(id);
      }
    }
  }

  function renderConversation(c) {
    st.conv = c;
    st.info.set(c.conversation_id, { risk: c.triage.risk, categories: c.triage.categories, channel: c.channel, state: c.state });
    if (c.triage.risk === "crisis") st.crisisSeen.add(c.conversation_id);
    show($("conv-placeholder"), false);
    show($("conv"), true);
    show($("tools"), true);
    $("conv-title").textContent = fill(S.conv_title, { id: shortId(c.conversation_id) });

    const meta = $("conv-meta");
    meta.replaceChildren(
      riskBadge(c.triage.risk),
      categoryTags(c.triage.categories),
      el("span", { cls: "channel", text: channelLabel(c.channel) }),
      el("span", { cls: "state state-" + c.state, text: S.states[c.state] || c.state }),
      el("span", { cls: "holder", text: c.counsellor ? fill(S.holder, { name: nameOf(c.counsellor_name, c.counsellor) }) : S.no_holder }),
    );
    if (c.previous && c.previous.conversation_id) {
      // Back soon after a conversation at high or crisis: the earlier one, a click away.
      const prev = c.previous;
      const link = el("button", {
        cls: "btn btn-small btn-secondary previous-open",
        text: fill(S.previous_open, { risk: S["risk_" + prev.risk] || prev.risk, date: time(prev.created_at, true) }),
        attrs: { type: "button", "data-conversation-id": prev.conversation_id },
      });
      link.addEventListener("click", () => openConversation(prev.conversation_id, { focus: true }));
      meta.append(link);
    }

    const writable = !c.read_only && c.state === "with_counsellor";
    const notice = $("conv-notice");
    let noticeText = "";
    if (!writable) {
      if (c.state === "waiting") noticeText = S.read_only_waiting;
      else if (c.state === "closed") noticeText = S.read_only_closed;
      else if (c.counsellor) noticeText = fill(S.read_only_other, { name: nameOf(c.counsellor_name, c.counsellor) });
      else noticeText = S.read_only_bot;
    }
    notice.textContent = noticeText;
    show(notice, !!noticeText);
    show($("claim-btn"), c.state === "waiting");
    show($("reply-form"), writable);
    // The transfer picker is fetched again whenever it comes into view (or shows another conversation).
    const freshPicker = $("transfer-section").hidden || $("tools").dataset.conversationId !== c.conversation_id;
    $("tools").dataset.conversationId = c.conversation_id;
    for (const section of document.querySelectorAll("#tools .writable")) show(section, writable);
    // Notes: the counsellor who has it, or had it once it is closed; a supervisor's advice (SV助言) anywhere.
    show($("note-form"), !!c.can_note);
    show($("advice-form"), supervises());
    if (writable && freshPicker) later("colleagues", refreshColleagues, 0);

    renderTranscript(c);
    renderPresence(c);
    renderReasons(c);
    renderIntake(c.intake || {});
    renderNotes(c.notes || []);
  }

  // The transcript follows new messages while the counsellor is at its bottom (``follow``, kept up to date
  // by scrolling, not measured when a message arrives: the reply box appearing after 担当する shrinks the
  // transcript without the counsellor having scrolled). Otherwise a 新着 marker with a jump button says
  // that something came; the counsellor's own reply always comes into view.
  let follow = true;
  let unseen = 0;
  const transcriptBox = $("transcript");

  function nearBottom(log) {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  let placed = -1; // where the page itself last put the scroll: its own scrolls say nothing of the reader
  function toBottom() {
    transcriptBox.scrollTop = transcriptBox.scrollHeight;
    placed = transcriptBox.scrollTop;
    follow = true;
    setUnseen(0);
  }

  function setUnseen(n) {
    unseen = n;
    const marker = $("new-marker");
    marker.textContent = n > 0 ? fill(S.new_messages, { n }) : "";
    show(marker, n > 0);
  }

  transcriptBox.addEventListener("scroll", () => {
    if (Math.abs(transcriptBox.scrollTop - placed) < 2) return;
    follow = nearBottom(transcriptBox);
    if (follow && unseen) setUnseen(0);
  });
  // The box changes size (the reply box shown or hidden, the window resized): stay at the bottom.
  if (window.ResizeObserver) new ResizeObserver(() => { if (follow) { transcriptBox.scrollTop = transcriptBox.scrollHeight; placed = transcriptBox.scrollTop; } }).observe(transcriptBox);
  $("new-marker").addEventListener("click", () => { toBottom(); transcriptBox.focus(); });

  function renderTranscript(c) {
    const log = transcriptBox;
    const msgs = c.messages || [];
    const same = st.rendered.id === c.conversation_id && msgs.length >= st.rendered.count;
    if (!same) {
      log.replaceChildren();
      st.rendered = { id: c.conversation_id, count: 0 };
    }
    // What became of a message already shown can change (sent, retried, failed): update its line.
    let changed = false;
    for (const li of [...log.children]) {
      const i = Number(li.dataset.index);
      if (!(i < st.rendered.count && msgs[i])) continue;
      if ((li.dataset.flags || "") !== flagsKey(msgs[i])) {
        li.replaceWith(messageItem(msgs[i], i)); // withdrawn since it was drawn: drawn again, without its text
        changed = true;
      } else {
        changed = renderDelivery(li, msgs[i].delivery) || changed;
      }
    }
    for (let i = st.rendered.count; i < msgs.length; i++) log.append(messageItem(msgs[i], i));
    const added = msgs.length - st.rendered.count;
    st.rendered.count = msgs.length;
    if (!same || st.ownReply) {
      st.ownReply = false;
      toBottom();
    } else if (follow) {
      if (added > 0 || changed) toBottom();
    } else if (added > 0) {
      setUnseen(unseen + added);
    }
  }

  function flagsKey(m) {
    return (Array.isArray(m.flags) ? m.flags : []).map(String).join(",");
  }

  function messageItem(m, index) {
    const from = ["user", "bot", "counsellor", "system"].includes(m.from) ? m.from : "system";
    // A message in the log (role=log takes the list's semantics away: each is an article).
    const li = el("li", { cls: "msg from-" + from, attrs: { "data-index": String(index), "data-from": from, role: "article" } });
    li.dataset.flags = flagsKey(m);
    const head = el("div", { cls: "msg-head" }, [
      el("span", { cls: "msg-who", text: S["from_" + from] }),
      el("time", { cls: "msg-time", text: time(m.at), attrs: { datetime: m.at } }),
    ]);
    if (from === "user" && m.risk && m.risk !== "low") head.append(riskBadge(m.risk));
    const attachments = Number(m.attachments) > 0 ? Math.floor(Number(m.attachments)) : 0;
    const flags = Array.isArray(m.flags) ? m.flags : [];
    const items = Array.isArray(m.items) ? m.items : [];
    const pictures = Array.isArray(m.pictures) ? m.pictures : [];
    const body = el("div", { cls: "msg-text" });
    if (flags.includes("withdrawn")) {
      body.append(el("em", { cls: "msg-withdrawn", text: S.withdrawn }));
    } else if (m.kind === "media" && !m.text) {
      if (!attachments && !items.length) body.append(el("em", { text: S.media })); // else the lines below say it
    } else {
      appendHighlighted(body, m.text || "", m.highlights || []);
    }
    li.append(head, body);
    if (flags.includes("edited")) li.append(el("p", { cls: "msg-flag", text: S.flag_edited, attrs: { "data-flag": "edited" } }));
    if (items.length) li.append(el("ul", { cls: "msg-items" }, items.map((it) => el("li", { cls: "msg-item", text: describeItem(it) }))));
    for (const p of pictures) li.append(pictureBlock(st.current, p));
    if (typeof m.full_text === "string" && m.full_text) {
      // A mail: the text above is its new part; the whole of it (quoted thread, signature) on demand.
      li.append(el("details", { cls: "msg-full" }, [
        el("summary", { text: S.mail_full }),
        el("pre", { cls: "msg-full-text", text: m.full_text }),
      ]));
    }
    if (attachments) li.append(el("p", { cls: "msg-attachments", text: fill(S.attachments_note, { n: attachments }) }));
    if (flags.includes("whole_mail")) li.append(el("p", { cls: "msg-flag", text: S.flag_whole_mail, attrs: { "data-flag": "whole_mail" } }));
    renderDelivery(li, m.delivery);
    return li;
  }

  function size(bytes) {
    const n = Number(bytes) || 0;
    if (n >= 1024 * 1024) return fill(S.size_mb, { n: (n / 1024 / 1024).toFixed(1) });
    if (n >= 1024) return fill(S.size_kb, { n: Math.round(n / 1024) });
    return fill(S.size_b, { n });
  }

  // What came besides text, in words: a sticker's keywords, a place, a file's name and size, and for what
  // was not kept, why. Everything from the person is put in as text.
  function describeItem(it) {
    const kind = String(it && it.kind || "");
    let text;
    if (kind === "sticker") text = fill(S.item_sticker, { keywords: (it.keywords || []).map(String).join("、") || S.item_none });
    else if (kind === "location") text = fill(S.item_location, { title: it.title || S.item_none, address: it.address || S.item_none });
    else if (kind === "file") text = fill(S.item_file, { name: it.name || S.item_none, size: size(it.size) });
    else if (kind === "image") text = it.picture ? S.item_image : S.item_image_broken;
    else if (kind === "video" || kind === "audio") text = S["item_" + kind];
    else text = fill(S.item_other, { kind });
    if (it.refused && kind !== "image") text += " " + fill(S.item_refused, { kind: S.refused_kinds[it.refused] || it.refused });
    return text;
  }

  // A picture is shown only after a click, under a warning: screenshots of harassment and worse.
  function pictureBlock(conversationId, p) {
    const box = el("div", { cls: "msg-picture" });
    const show = el("button", { cls: "picture-show", text: S.picture_show, attrs: { type: "button" } });
    const hide = el("button", { cls: "picture-hide", text: S.picture_hide, attrs: { type: "button" } });
    const warning = el("p", { cls: "picture-warning", text: S.picture_warning });
    const src = API + "/conversations/" + encodeURIComponent(conversationId) + "/pictures/" + String(Number(p.id));
    show.addEventListener("click", () => {
      const img = el("img", { cls: "picture", attrs: { src, alt: S.picture_alt, width: String(Number(p.width) || ""), height: String(Number(p.height) || "") } });
      box.replaceChildren(img, hide);
    });
    hide.addEventListener("click", () => box.replaceChildren(warning, show));
    box.append(warning, show);
    return box;
  }

  // A line under a message to the person while it is not delivered: waiting (or being retried), or
  // failed. The reason is the server's own (English, internal): in the title only. Returns whether
  // the line changed.
  function renderDelivery(li, delivery) {
    const status = delivery && delivery.status;
    const attempts = delivery ? Number(delivery.attempts) || 0 : 0;
    const error = delivery && typeof delivery.error === "string" ? delivery.error : "";
    // Whether the person is there says why a message waits or failed, in words the counsellor can act on.
    const presence = st.conv && st.conv.presence ? String(st.conv.presence.state || "") : "";
    const key = !status || status === "delivered" ? "" : JSON.stringify([status, attempts, error, presence]);
    if ((li.dataset.delivery || "") === key) return false;
    const old = li.querySelector(":scope > .msg-delivery");
    if (old) old.remove();
    if (key) {
      const failed = status === "failed"; // "pending" and "sending" both wait
      // A row being sent counts the attempt in progress; a pending one only the attempts that failed.
      const retrying = attempts > (status === "sending" ? 1 : 0);
      let text = failed ? S.delivery_failed : retrying ? S.delivery_retrying : S.delivery_pending;
      if (failed && (presence === "quick_exit" || /quick exit/.test(error))) text = S.delivery_quick_exit;
      else if (failed && (presence === "blocked" || /blocked/.test(error))) text = S.delivery_blocked;
      else if (!failed && presence === "left") text = S.delivery_left;
      const line = el("p", { cls: "msg-delivery " + (failed ? "failed" : "pending"), text, attrs: { "data-status": status } });
      if (error) line.title = error;
      li.append(line);
      li.dataset.delivery = key;
    } else {
      delete li.dataset.delivery;
    }
    return true;
  }

  // The triage reasons' spans count Unicode code points (Python string offsets): split the same way,
  // join overlapping spans, and wrap each joined range in a <mark> built with DOM calls.
  // Word boundaries (in code points) of a text, from the browser's Japanese word segmentation: a highlight
  // covers whole words, never half a word or a lone kana.
  function wordBounds(text) {
    const bounds = new Set([0]);
    try {
      const seg = new Intl.Segmenter("ja", { granularity: "word" });
      let cp = 0;
      for (const part of seg.segment(text)) {
        cp += Array.from(part.segment).length;
        bounds.add(cp);
      }
    } catch { /* no segmenter: the spans as the triage gave them */ }
    return [...bounds].sort((x, y) => x - y);
  }

  function widen(a, b, bounds, length) {
    let start = a;
    let end = b;
    for (const x of bounds) if (x <= a) start = x;
    for (const x of [...bounds].reverse()) if (x >= b) end = x;
    if (end <= start) end = Math.min(length, b);
    return [start, Math.min(end, length)];
  }

  function appendHighlighted(container, text, highlights) {
    const chars = Array.from(text);
    const bounds = highlights.length ? wordBounds(text) : [];
    const spans = [];
    for (const h of highlights) {
      if (!h || !Array.isArray(h.span)) continue;
      let a = Math.max(0, Math.min(chars.length, Number(h.span[0]) | 0));
      let b = Math.max(0, Math.min(chars.length, Number(h.span[1]) | 0));
      if (b > a) [a, b] = widen(a, b, bounds, chars.length);
      if (b > a) spans.push({ a, b, rules: [String(h.rule)] });
    }
    spans.sort((x, y) => x.a - y.a || x.b - y.b);
    const merged = [];
    for (const s of spans) {
      const last = merged[merged.length - 1];
      if (last && s.a <= last.b) {
        last.b = Math.max(last.b, s.b);
        for (const r of s.rules) if (!last.rules.includes(r)) last.rules.push(r);
      } else {
        merged.push({ a: s.a, b: s.b, rules: [...s.rules] });
      }
    }
    let pos = 0;
    for (const m of merged) {
      if (m.a > pos) container.append(document.createTextNode(chars.slice(pos, m.a).join("")));
      const mark = document.createElement("mark");
      mark.textContent = chars.slice(m.a, m.b).join("");
      mark.title = fill(S.highlight_title, { rules: [...new Set(m.rules.map((r) => reasonLabel({ rule: r })))].join("、") });
      mark.dataset.rules = m.rules.join(" ");
      container.append(mark);
      pos = m.b;
    }
    if (pos < chars.length) container.append(document.createTextNode(chars.slice(pos).join("")));
  }

  // What the conversation itself found (the direct question and its answer, a return soon after a
  // serious conversation), in the queue's words.
  function dialogueFlags(reasons) {
    const out = [];
    for (const r of reasons) {
      if (r.rule === "dialogue.danger_question") out.push(fill(S.queue_danger, { answer: dangerLabel(r.answer) }));
      else if (r.rule === "dialogue.returning") out.push(S.queue_returning);
    }
    return out;
  }

  function dangerLabel(answer) {
    return (S.danger_answer && S.danger_answer[answer]) || answer || S.intake_none;
  }

  // A triage reason in Japanese: what kind of sign (content: the page's strings, by the rule's family) and
  // the words it matched. The rule's id is for staff who edit the rules: in the title only.
  function reasonLabel(r) {
    const rule = String(r.rule || "");
    const family = rule.split(".")[0];
    const group = (S.reason_groups && S.reason_groups[family]) || (S.categories && S.categories[family]) || S.reason_other;
    return r.matched ? fill(S.reason_matched, { group, matched: r.matched }) : group;
  }

  function wholeWords(c, r, reasons) {
    const m = Number.isInteger(r.message) ? (c.messages || [])[r.message] : null;
    if (!m || !Array.isArray(r.span)) return r.matched;
    let [a, b] = r.span.map((x) => Number(x) | 0);
    for (const o of reasons) {
      if (o.message === r.message && Array.isArray(o.span) && o.span[0] < b && o.span[1] > a && !String(o.rule).startsWith("dialogue.")) {
        a = Math.min(a, o.span[0]);
        b = Math.max(b, o.span[1]);
      }
    }
    return previewQuote(m.text || "", { rule: r.rule, matched: r.matched, span: [a, b] }).matched || r.matched;
  }

  function renderReasons(c) {
    const ul = $("reasons");
    const reasons = (c.triage && c.triage.reasons) || [];
    ul.replaceChildren();
    if (!reasons.length) {
      ul.append(el("li", { cls: "empty", text: S.reasons_none }));
      return;
    }
    const seen = new Set();
    for (let r of reasons) {
      if (typeof r.rule === "string" && r.rule.startsWith("dialogue.")) {
        const label = (S.dialogue_reasons && S.dialogue_reasons[r.rule]) || r.rule;
        ul.append(el("li", { cls: "dialogue-reason", attrs: { "data-rule": r.rule } }, [
          el("strong", { text: fill(label, { answer: dangerLabel(r.answer) }) }),
        ]));
        continue;
      }
      // The whole words it matched in its message (with what other rules found overlapping them), as the
      // transcript marks them: never half a word (もう死に) or a lone kana.
      r = { ...r, matched: wholeWords(c, r, reasons) };
      // Once each: a kind of sign and the words it matched (the same words in several messages are one
      // line); a lone kana says nothing to a reader (its whole word is marked in the transcript).
      const key = reasonLabel({ rule: r.rule }) + "\u0000" + r.matched;
      if (seen.has(key)) continue;
      seen.add(key);
      if (r.matched && /^[\u3040-\u30ff]$/.test(r.matched)) continue;
      const withdrawn = String(r.rule).startsWith("withdrawn.");
      const li = withdrawn
        ? el("li", { cls: "reason-withdrawn", attrs: { title: r.rule } }, [el("span", { cls: "reason-group", text: reasonLabel({ rule: String(r.rule).slice("withdrawn.".length) }) }), document.createTextNode(" " + S.reason_withdrawn)])
        : el("li", { attrs: { title: r.rule, "data-rule": r.rule } }, [
          el("span", { cls: "reason-group", text: reasonLabel({ rule: r.rule }) }),
          document.createTextNode(" "),
          el("mark", { text: r.matched }),
        ]);
      ul.append(li);
    }
  }

  function renderIntake(intake) {
    $("intake-age").textContent = intake.age_band ? (S.age_bands[intake.age_band] || intake.age_band) : S.intake_none;
    $("intake-prefecture").textContent = intake.prefecture || S.intake_none;
    $("intake-safe").textContent = intake.safe_now ? (S.safe_now[intake.safe_now] || intake.safe_now) : S.intake_none;
    $("intake-danger").textContent = intake.danger_asked ? dangerLabel(intake.danger_answer || "pending") : S.intake_none;
  }

  function renderNotes(notes) {
    const ul = $("notes-list");
    ul.replaceChildren();
    if (!notes.length) {
      ul.append(el("li", { cls: "empty", text: S.notes_none }));
      return;
    }
    for (const n of notes) {
      const advice = n.kind === "advice";
      ul.append(el("li", { cls: "note" + (advice ? " advice" : ""), attrs: { "data-kind": advice ? "advice" : "note" } }, [
        el("div", { cls: "note-by" }, [
          advice ? el("span", { cls: "advice-tag", text: S.advice_tag }) : null,
          document.createTextNode(fill(S.note_by, { name: n.by, time: time(n.at, true) })),
        ]),
        el("div", { cls: "note-text", text: n.text }), // a counsellor's words: text only
      ]));
    }
  }

  // Enter sends; Shift+Enter is a new line; the Enter that confirms a Japanese IME conversion never sends.
  let composing = false;
  const reply = $("reply");
  reply.addEventListener("compositionstart", () => { composing = true; });
  reply.addEventListener("compositionend", () => { setTimeout(() => { composing = false; }, 0); });
  reply.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.shiftKey) return;
    if (e.isComposing || composing || e.keyCode === 229) return;
    e.preventDefault();
    $("reply-form").requestSubmit();
  });

  let sending = false;
  $("reply-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = st.current;
    const text = reply.value;
    if (!id || !text.trim() || sending) return;
    sending = true;
    $("reply-send").disabled = true;
    const r = await api("POST", `/conversations/${encodeURIComponent(id)}/messages`, { text });
    sending = false;
    $("reply-send").disabled = false;
    if (r.ok) {
      if (reply.value === text) reply.value = "";
      setConvMessage("");
      st.ownReply = true; // what the counsellor just sent comes into view, wherever they had scrolled
      await loadConversation(id, true);
      reply.focus();
      return;
    }
    const detail = detailOf(r.data);
    setConvMessage(r.status === 409 || r.status === 403 ? S.reply_not_yours : fill(S.reply_failed, { detail: detail || r.status }), true);
    if (r.status === 409 || r.status === 403) loadConversation(id, true);
  });

  $("note-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = st.current;
    const text = $("note-text").value;
    if (!id || !text.trim()) return;
    const r = await api("POST", `/conversations/${encodeURIComponent(id)}/notes`, { text });
    if (r.ok) {
      $("note-text").value = "";
      setConvMessage(S.note_saved);
      await loadConversation(id, true);
    } else {
      setConvMessage(fill(S.note_failed, { detail: detailOf(r.data) || r.status }), true);
    }
  });

  $("advice-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = st.current;
    const text = $("advice-text").value;
    if (!id || !text.trim()) return;
    const r = await api("POST", `/conversations/${encodeURIComponent(id)}/advice`, { text });
    if (r.ok) {
      $("advice-text").value = "";
      setConvMessage(S.advice_saved);
      await loadConversation(id, true);
    } else {
      setConvMessage(fill(S.note_failed, { detail: detailOf(r.data) || r.status }), true);
    }
  });

  async function transfer(to) {
    const id = st.current;
    if (!id) return;
    st.actions += 1;
    const r = await api("POST", `/conversations/${encodeURIComponent(id)}/transfer`, { to: to || null });
    st.actions += 1; // and a read begun while it was under way (the conversation passed through the queue)
    if (r.ok) {
      $("transfer-to").value = "";
      if (r.data.state === "with_counsellor") {
        // Now with someone else, whose conversation a counsellor may not read: keep the view, read-only.
        st.handedOver.add(id);
        if (st.conv && st.conv.conversation_id === id) {
          // The state too: a read that landed during the transfer may have drawn it as waiting.
          renderConversation({ ...st.conv, state: r.data.state, counsellor: r.data.counsellor, counsellor_name: null, read_only: true });
        }
        setConvMessage(fill(S.transfer_done, { name: r.data.counsellor }));
        await refreshLists();
        if (supervises()) await loadConversation(id, true);
        return;
      }
      setConvMessage(to ? fill(S.transfer_fallback, { name: to }) : S.transfer_queued, !!to);
      await refreshLists();
      await loadConversation(id, true);
      return;
    }
    const detail = detailOf(r.data);
    const text = r.status === 404 ? S.transfer_missing : r.status === 422 && /that is you/.test(detail) ? S.transfer_self
      : r.status === 409 && /already has/.test(detail) ? S.transfer_full : fill(S.transfer_failed, { detail: detail || r.status });
    setConvMessage(text, true);
    refreshColleagues(); // the list was out of date: someone left, or filled up
  }
  // A colleague off duty may not be at their desk: said first; the second press transfers.
  let offDutyConfirmed = "";
  $("transfer-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const select = $("transfer-to");
    const to = select.value.trim();
    if (!to) {
      setConvMessage(S.transfer_pick, true);
      select.focus();
      return;
    }
    const option = select.selectedOptions[0];
    if (option && option.dataset.onDuty === "false" && offDutyConfirmed !== to) {
      offDutyConfirmed = to;
      setConvMessage(fill(S.transfer_off_duty, { name: to }), true);
      $("transfer-submit").textContent = S.transfer_anyway;
      return;
    }
    resetTransferButton();
    transfer(to);
  });
  function resetTransferButton() {
    offDutyConfirmed = "";
    $("transfer-submit").textContent = S.transfer_submit;
  }
  // A refused transfer (or a warning about one) does not linger once the choice changes.
  $("transfer-to").addEventListener("change", () => {
    resetTransferButton();
    if ($("conv-msg").classList.contains("error")) setConvMessage("");
  });
  $("requeue-btn").addEventListener("click", () => transfer(null));

  // The transfer picker: colleagues from the API (on duty first), each with their load; a colleague
  // at their limit is listed but cannot be chosen. Redrawn only when the list changed, so that an
  // open drop-down is not closed under the pointer; the choice is kept while it is still possible.
  async function refreshColleagues() {
    if (!st.me || $("tools").hidden || $("transfer-section").hidden) return;
    const r = await api("GET", "/colleagues");
    if (r.ok && Array.isArray(r.data) && st.me) renderColleagues(r.data);
  }

  function renderColleagues(list) {
    const key = JSON.stringify(list);
    if (key === st.colleaguesKey) return;
    st.colleaguesKey = key;
    const select = $("transfer-to");
    const chosen = select.value;
    const options = [el("option", { text: list.length ? S.choose : S.colleagues_none, attrs: { value: "" } })];
    let keep = false;
    for (const c of list) {
      const full = Number(c.held) >= Number(c.limit);
      const values = { name: nameOf(c.display_name, c.username), duty: c.on_duty ? S.colleague_on : S.colleague_off, held: c.held, limit: c.limit };
      const option = el("option", {
        text: fill(full ? S.colleague_full : S.colleague, values), // a username is text, like everything else
        attrs: { value: c.username, "data-on-duty": String(!!c.on_duty) },
      });
      if (full) {
        option.disabled = true;
        option.dataset.full = "true";
      }
      if (c.username === chosen && !full) keep = true;
      options.push(option);
    }
    select.replaceChildren(...options);
    select.value = keep ? chosen : "";
  }

  $("close-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = st.current;
    const outcome = $("close-outcome").value;
    if (!id) return;
    if (!outcome) { setConvMessage(S.close_pick, true); $("close-outcome").focus(); return; }
    const referrals = [...document.querySelectorAll("#close-refs-list input:checked")].map((x) => x.value);
    $("close-btn").disabled = true;
    st.actions += 1;
    const r = await api("POST", `/conversations/${encodeURIComponent(id)}/close`, { outcome, referrals });
    st.actions += 1;
    $("close-btn").disabled = false;
    if (r.ok) {
      $("close-outcome").value = "";
      for (const x of document.querySelectorAll("#close-refs-list input")) x.checked = false;
      // A counsellor may not read a conversation once it is closed (only supervisors may): keep what
      // the page has, shown as closed, instead of fetching it again.
      st.handedOver.add(id);
      if (st.conv && st.conv.conversation_id === id) {
        renderConversation({ ...st.conv, state: "closed", counsellor: null, counsellor_name: null, read_only: true });
      }
      setConvMessage(S.close_done);
      await refreshLists();
      if (supervises()) await loadConversation(id, true);
      $("conv-title").focus();
      return;
    }
    setConvMessage(fill(S.close_failed, { detail: detailOf(r.data) || r.status }), true);
  });

  // -- live updates ---------------------------------------------------------------------------------

  let live = null;
  let liveRetry = 0;
  let liveTimer = null;
  let listsTimer = null;
  let convTimer = null;
  let overviewTimer = null;
  let colleaguesTimer = null;
  let accountsTimer = null;

  function setLive(on) {
    $("live-status").textContent = on ? S.live_on : S.live_off;
    $("live-status").classList.toggle("offline", !on);
  }

  function connectLive() {
    if (!st.me || live) return;
    clearTimeout(liveTimer);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(scheme + "//" + location.host + API + "/live");
    live = ws;
    ws.addEventListener("open", () => {
      liveRetry = 0;
      setLive(true);
      // Whatever happened while the socket was down: fetch it now.
      refreshLists();
      if (st.current) loadConversation(st.current);
      if (st.view === "supervisor") refreshOverview();
    });
    ws.addEventListener("message", (ev) => {
      let event;
      try { event = JSON.parse(ev.data); } catch { return; }
      onEvent(event);
    });
    ws.addEventListener("close", () => {
      if (live !== ws) return;
      live = null;
      if (!st.me) return;
      setLive(false);
      const delay = Math.min(30000, 1000 * 2 ** liveRetry++) * (0.75 + Math.random() * 0.5);
      liveTimer = setTimeout(async () => {
        if (!st.me) return;
        const r = await api("GET", "/me"); // a closed socket may mean the session ended
        if (r.ok) connectLive();
        else if (r.status !== 401 && st.me) liveTimer = setTimeout(connectLive, delay);
      }, delay);
    });
  }

  function stopLive() {
    clearTimeout(liveTimer);
    if (live) {
      const ws = live;
      live = null;
      ws.close();
    }
  }

  function later(timerName, fn, ms = 150) {
    // Events come in bursts: one refetch per burst.
    if (timerName === "lists") { clearTimeout(listsTimer); listsTimer = setTimeout(fn, ms); }
    if (timerName === "conv") { clearTimeout(convTimer); convTimer = setTimeout(fn, ms); }
    if (timerName === "overview") { clearTimeout(overviewTimer); overviewTimer = setTimeout(fn, ms); }
    if (timerName === "colleagues") { clearTimeout(colleaguesTimer); colleaguesTimer = setTimeout(fn, ms); }
    if (timerName === "accounts") { clearTimeout(accountsTimer); accountsTimer = setTimeout(fn, ms); }
  }

  // Events carry ids, states and risk only (never text): they say when to refetch.
  function onEvent(ev) {
    const id = ev.conversation_id || "";
    if (id) {
      const prev = st.info.get(id) || {};
      st.info.set(id, { ...prev, risk: ev.risk || prev.risk, state: ev.state || prev.state });
      if (ev.risk === "crisis" && ev.state === "waiting" && !st.crisisSeen.has(id)) {
        st.crisisSeen.add(id);
        alarm(id); // (alerts addressed to me are fetched with the lists)
      }
      if (id === st.current) later("conv", () => { if (st.current === id) loadConversation(id); });
      else if (st.me && (st.me.held || []).includes(id) && ev.kind === "conversation") st.updated.add(id);
    }
    later("lists", refreshLists);
    if (st.view === "supervisor") later("overview", refreshOverview, 300);
    // Loads change as conversations move: the transfer picker and the accounts' counts follow.
    if (!$("tools").hidden && !$("transfer-section").hidden) later("colleagues", refreshColleagues, 300);
    if (st.view === "accounts") later("accounts", refreshAccounts, 300);
  }

  let tickTimer = null;
  let pollTimer = null;
  function startTimers() {
    stopTimers();
    tickTimer = setInterval(tickWaits, TICK_MS);
    pollTimer = setInterval(() => {
      refreshLists();
      refreshColleagues();
      if (st.view === "supervisor") refreshOverview();
      if (st.view === "accounts") refreshAccounts();
    }, POLL_MS);
  }
  function stopTimers() {
    clearInterval(tickTimer);
    clearInterval(pollTimer);
    for (const t of [listsTimer, convTimer, overviewTimer, colleaguesTimer, accountsTimer]) clearTimeout(t);
  }

  // -- the crisis alarm: a sound, a flashing title, a notification, a banner --------------------------

  let audio = null;
  function unlockAudio() {
    // Browsers let a page make sound only after a user gesture: make (or wake) the context on one.
    try {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return;
      if (!audio) audio = new Ctx();
      if (audio.state === "suspended") audio.resume();
    } catch { /* no sound, then */ }
  }
  document.addEventListener("pointerdown", unlockAudio, { capture: true });
  document.addEventListener("keydown", unlockAudio, { capture: true });

  function beep() {
    try {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return;
      if (!audio) audio = new Ctx();
      if (audio.state === "suspended") audio.resume();
      const t0 = audio.currentTime + 0.02;
      [880, 660, 880].forEach((freq, i) => {
        const osc = audio.createOscillator();
        const gain = audio.createGain();
        const t = t0 + i * 0.22;
        osc.type = "sine";
        osc.frequency.setValueAtTime(freq, t);
        gain.gain.setValueAtTime(0.0001, t);
        gain.gain.exponentialRampToValueAtTime(0.25, t + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.18);
        osc.connect(gain);
        gain.connect(audio.destination);
        osc.start(t);
        osc.stop(t + 0.2);
      });
    } catch { /* no sound, then */ }
  }

  let flashTimer = null;
  let flashEnd = null;
  function flashTitle() {
    clearInterval(flashTimer);
    clearTimeout(flashEnd);
    let on = true;
    document.title = S.title_alert;
    flashTimer = setInterval(() => {
      on = !on;
      document.title = on ? S.title_alert : S.title;
    }, 1000);
    flashEnd = setTimeout(stopFlash, 120000);
  }
  function stopFlash() {
    clearInterval(flashTimer);
    clearTimeout(flashEnd);
    flashTimer = null;
    document.title = S.title;
  }

  function notify(id) {
    try {
      if (!("Notification" in window) || Notification.permission !== "granted") return;
      // Nothing the person wrote goes into a notification: other people may see the screen.
      const n = new Notification(S.notify_title, { body: S.notify_body, tag: "tsunagi-crisis-" + id });
      n.onclick = () => { window.focus(); openConversation(id, { focus: true }); n.close(); };
    } catch { /* notifications unavailable */ }
  }

  // The alarm stands while a crisis it was raised for still needs someone (it waits in the queue, or an
  // alert of mine about it is unanswered) and nobody here opened or dismissed it: the sound comes again
  // every ALARM_REPEAT_MS; once someone takes the crisis, the banner goes by itself.
  const ALARM_REPEAT_MS = 20000;
  let repeatTimer = null;
  function alarm(id) {
    st.lastCrisis = id;
    st.alarmed.add(id);
    beep();
    flashTitle();
    notify(id);
    $("crisis-banner-text").textContent = S.crisis_banner;
    show($("crisis-banner"), true);
    clearInterval(repeatTimer);
    repeatTimer = setInterval(beep, ALARM_REPEAT_MS);
  }

  function stillNeeded() {
    const waiting = new Set(st.queue.filter((q) => q.risk === "crisis").map((q) => q.conversation_id));
    return (id) => waiting.has(id) || st.alerts.has(id);
  }

  function settleAlarm() {
    const needed = stillNeeded();
    for (const id of [...st.alarmed]) if (!needed(id)) st.alarmed.delete(id);
    if (!st.alarmed.size) stopAlarm();
    else if (!st.alarmed.has(st.lastCrisis)) st.lastCrisis = [...st.alarmed].pop();
  }

  function stopAlarm() {
    st.alarmed.clear();
    clearInterval(repeatTimer);
    repeatTimer = null;
    stopFlash();
    show($("crisis-banner"), false);
  }

  $("crisis-open").addEventListener("click", () => {
    const id = st.lastCrisis;
    stopAlarm();
    if (id) openConversation(id, { focus: true });
  });
  $("crisis-dismiss").addEventListener("click", stopAlarm);
  // Someone is at the keyboard: the title has done its job.
  document.addEventListener("pointerdown", () => { if (flashTimer) stopFlash(); });
  document.addEventListener("keydown", () => { if (flashTimer) stopFlash(); });

  function renderNotifyButton() {
    const btn = $("notify-btn");
    const state = $("notify-state");
    if (!("Notification" in window)) { show(btn, false); show(state, false); return; }
    const p = Notification.permission;
    show(btn, p === "default");
    state.textContent = p === "granted" ? S.notify_on : p === "denied" ? S.notify_denied : "";
    show(state, p !== "default");
  }
  // Permission is asked for on a click only, never on load.
  $("notify-btn").addEventListener("click", async () => {
    try { await Notification.requestPermission(); } catch { /* older browsers: callback form */ }
    renderNotifyButton();
  });

  // -- supervisors ---------------------------------------------------------------------------------------

  async function refreshOverview() {
    if (!supervises()) return;
    const r = await api("GET", "/overview");
    if (!r.ok) return;
    const o = r.data;
    st.overview = o;
    st.overviewAt = performance.now();
    $("ov-waiting").textContent = fill(S.count, { n: o.waiting });
    $("ov-longest").textContent = o.waiting ? duration(o.longest_wait_seconds) : "—";
    $("ov-active-count").textContent = fill(S.count, { n: o.active.length });

    const alerts = $("ov-alerts");
    alerts.replaceChildren();
    if (!o.alerts.length) alerts.append(el("li", { cls: "empty", text: S.alerts_none }));
    for (const a of o.alerts) {
      const b = el("button", { cls: "link", text: fill(S.conv_title, { id: shortId(a.conversation_id) }), attrs: { type: "button" } });
      b.addEventListener("click", () => openConversation(a.conversation_id, { focus: true }));
      alerts.append(el("li", {}, [el("span", { cls: "alert-kind", text: (S.alert_kinds[a.kind] || a.kind) + " " + time(a.at) + " " }), b]));
    }

    const active = $("ov-active");
    active.replaceChildren();
    if (!o.active.length) {
      active.append(el("tr", {}, [el("td", { cls: "empty", text: S.active_none, attrs: { colspan: "6" } })]));
    }
    for (const a of o.active) {
      st.info.set(a.conversation_id, { risk: a.risk, categories: a.categories, channel: a.channel, state: "with_counsellor" });
      const watch = el("button", { cls: "btn btn-small btn-secondary", text: S.watch, attrs: { type: "button", "aria-label": S.watch + "：" + fill(S.conv_title, { id: shortId(a.conversation_id) }) } });
      watch.addEventListener("click", () => openConversation(a.conversation_id, { focus: true }));
      active.append(el("tr", { attrs: { "data-conversation-id": a.conversation_id } }, [
        el("td", {}, [riskBadge(a.risk)]),
        el("td", {}, [categoryTags(a.categories)]),
        el("td", { text: channelLabel(a.channel) }),
        el("td", { cls: "counsellor", text: nameOf(a.counsellor_name, a.counsellor) }),
        el("td", { text: a.since ? time(a.since) : "" }),
        el("td", {}, [watch]),
      ]));
    }

    const cs = $("ov-counsellors");
    const typing = document.activeElement && document.activeElement.closest && document.activeElement.closest("#ov-counsellors");
    if (typing) return; // a supervisor typing a colleague's name: the row is not rebuilt under them
    cs.replaceChildren();
    const names = $("audit-people");
    names.replaceChildren();
    for (const c of o.counsellors) {
      for (const v of [c.username, c.display_name]) if (v) names.append(el("option", { attrs: { value: v } }));
      const input = el("input", { cls: "name-edit", attrs: { value: c.display_name || "", maxlength: "32", "aria-label": fill(S.name_of, { username: c.username }) } });
      const save = el("button", { cls: "btn btn-small btn-secondary", text: S.name_save, attrs: { type: "button", "aria-label": fill(S.name_save_of, { username: c.username }) } });
      save.addEventListener("click", () => saveColleagueName(c.username, input));
      input.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.isComposing) saveColleagueName(c.username, input);
      });
      cs.append(el("tr", { attrs: { "data-username": c.username } }, [
        el("td", { text: c.username }),
        el("td", { cls: "name-cell" }, [input, save]),
        el("td", { text: S["role_" + c.role] || c.role }),
        el("td", { cls: c.on_duty ? "on-duty" : "off-duty", text: c.on_duty ? S.on_duty : S.off_duty }),
        el("td", { cls: "load", text: fill(S.load, { load: c.load, limit: c.limit }) }),
      ]));
    }
  }

  async function saveColleagueName(username, input) {
    const value = input.value.trim();
    if (!value) {
      flashMessage(S.name_missing);
      return;
    }
    const r = await api("POST", "/accounts/" + encodeURIComponent(username) + "/display-name", { display_name: value });
    if (!r.ok) {
      flashMessage(r.status === 422 ? S.name_invalid : fill(S.name_failed, { detail: detailOf(r.data) || r.status }));
      return;
    }
    input.blur();
    flashMessage(fill(S.name_saved_of, { username, name: r.data.display_name }));
    if (username === st.me.username) {
      st.me.display_name = r.data.display_name;
      renderWho();
    }
  }

  async function refreshStats() {
    if (!supervises()) return;
    const days = Number($("stats-days").value) || 30;
    $("csv-link").href = API + "/stats.csv?days=" + days;
    $("csv-totals-link").href = API + "/stats-totals.csv?days=" + days;
    const r = await api("GET", "/stats?days=" + days);
    if (!r.ok) return;
    const s = r.data;
    const total = typeof s.conversations === "number" ? s.conversations : Object.values(s.by_day).reduce((a, b) => a + b, 0);
    $("stats-totals").textContent = fill(S.stats_totals, { conversations: total, emergencies: s.emergencies, handed_off: s.handed_off, open: s.still_open || 0 });
    const charts = $("charts");
    charts.replaceChildren(
      dayChart(s.by_day),
      barChart("category", S.chart_category, Object.entries(s.by_category).map(([k, v]) => ({ key: k, label: categoryLabel(k), value: v }))
        .sort((a, b) => b.value - a.value)),
      barChart("risk", S.chart_risk, RISKS.filter((k) => k in s.by_risk).map((k) => ({ key: k, label: S["risk_" + k], value: s.by_risk[k], cls: "fill-" + k }))),
      barChart("channel", S.chart_channel, Object.entries(s.by_channel).map(([k, v]) => ({ key: k, label: channelLabel(k), value: v }))),
    );
  }
  $("stats-days").addEventListener("change", refreshStats);

  function chartFigure(name, title) {
    const id = "chart-" + name + "-title";
    const fig = el("figure", { cls: "chart", attrs: { "data-chart": name, "aria-labelledby": id } });
    fig.append(el("figcaption", { text: title, attrs: { id } }));
    return fig;
  }

  // Horizontal bars: a list of label, bar and number (the bar is decoration; the number is the data).
  function barChart(name, title, rows) {
    const fig = chartFigure(name, title);
    if (!rows.length) { fig.append(el("p", { cls: "empty", text: S.no_data })); return fig; }
    const max = Math.max(...rows.map((r) => r.value), 1);
    const ul = el("ul", { cls: "bars" });
    for (const r of rows) {
      const fill_ = el("span", { cls: "bar-fill " + (r.cls || "") });
      fill_.style.width = Math.max(2, (r.value / max) * 100) + "%"; // CSSOM, which the CSP allows
      ul.append(el("li", { cls: "bar-row", attrs: { "data-key": r.key } }, [
        el("span", { cls: "bar-label", text: r.label }),
        el("span", { cls: "bar-track", attrs: { "aria-hidden": "true" } }, [fill_]),
        el("span", { cls: "bar-value", text: fill(S.count, { n: r.value }) }),
      ]));
    }
    fig.append(ul);
    return fig;
  }

  // Conversations by day: columns in an SVG made with DOM calls, every day from the first to the last.
  function dayChart(byDay) {
    const fig = chartFigure("day", S.chart_day);
    const keys = Object.keys(byDay).sort();
    if (!keys.length) { fig.append(el("p", { cls: "empty", text: S.no_data })); return fig; }
    const days = [];
    const first = new Date(keys[0] + "T00:00:00Z");
    const last = new Date(keys[keys.length - 1] + "T00:00:00Z");
    for (let d = first; d <= last && days.length < 3700; d = new Date(d.getTime() + 86400000)) {
      const k = d.toISOString().slice(0, 10);
      days.push({ day: k, n: byDay[k] || 0 });
    }
    const NS = "http://www.w3.org/2000/svg";
    const W = 600, H = 160, pad = 24;
    const max = Math.max(...days.map((d) => d.n), 1);
    const bw = Math.min(48, (W - pad * 2) / days.length); // one day's slot; a short range stays narrow
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H + 24}`);
    svg.setAttribute("class", "day-chart");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", S.chart_day + "：" + days.map((d) => fill(S.day_bar, d)).join("、"));
    const axis = document.createElementNS(NS, "line");
    for (const [k, v] of [["x1", pad], ["x2", W - pad], ["y1", H], ["y2", H]]) axis.setAttribute(k, v);
    axis.setAttribute("class", "axis");
    svg.append(axis);
    days.forEach((d, i) => {
      const h = (d.n / max) * (H - 20);
      const rect = document.createElementNS(NS, "rect");
      rect.setAttribute("x", String(pad + i * bw + bw * 0.15));
      rect.setAttribute("y", String(H - h));
      rect.setAttribute("width", String(Math.max(1, bw * 0.7)));
      rect.setAttribute("height", String(h));
      rect.setAttribute("class", "day-bar");
      rect.setAttribute("data-day", d.day);
      const t = document.createElementNS(NS, "title");
      t.textContent = fill(S.day_bar, d);
      rect.append(t);
      svg.append(rect);
      if (d.n > 0) {
        const label = document.createElementNS(NS, "text");
        label.setAttribute("x", String(pad + i * bw + bw / 2));
        label.setAttribute("y", String(H - h - 4));
        label.setAttribute("class", "day-value");
        label.textContent = String(d.n);
        svg.append(label);
      }
    });
    for (const [i, d] of [[0, days[0]], [days.length - 1, days[days.length - 1]]]) {
      const label = document.createElementNS(NS, "text");
      label.setAttribute("x", String(pad + i * bw + bw / 2));
      label.setAttribute("y", String(H + 16));
      label.setAttribute("class", "day-label");
      label.textContent = d.day.slice(5).replace("-", "/");
      svg.append(label);
      if (days.length === 1) break;
    }
    fig.append(svg);
    return fig;
  }

  // The audit log, in Japanese (the actions' names from the page's strings), filtered by person, action
  // and days. Names, actions and details are text, whatever they hold.
  function auditQuery() {
    const q = new URLSearchParams({ limit: "200" });
    const person = $("audit-person").value.trim();
    if (person) q.set("person", person);
    if ($("audit-action").value) q.set("action", $("audit-action").value);
    if ($("audit-start").value) q.set("start", $("audit-start").value);
    if ($("audit-end").value) q.set("end", $("audit-end").value);
    return q.toString();
  }

  function auditActionLabel(action) {
    const labels = S.audit_actions || {};
    if (labels[action]) return labels[action];
    const family = String(action).split(".")[0] + ".";
    return labels[family] ? labels[family] + "（" + action + "）" : action;
  }

  function renderAuditActions() {
    const select = $("audit-action");
    if (select.options.length > 1) return;
    for (const [code, label] of Object.entries(S.audit_actions || {})) {
      if (!code.endsWith(".")) select.append(el("option", { text: label, attrs: { value: code } }));
    }
  }

  async function refreshAudit() {
    if (!supervises()) return;
    renderAuditActions();
    if ($("audit-start").value && $("audit-end").value && $("audit-start").value > $("audit-end").value) {
      $("audit-msg").textContent = S.audit_bad_range;
      return;
    }
    const r = await api("GET", "/audit?" + auditQuery());
    if (!r.ok) {
      $("audit-msg").textContent = S.audit_failed;
      return;
    }
    $("audit-msg").textContent = fill(S.audit_count, { n: r.data.length });
    const body = $("audit");
    body.replaceChildren();
    if (!r.data.length) body.append(el("tr", {}, [el("td", { cls: "empty", text: S.audit_none, attrs: { colspan: "5" } })]));
    for (const a of r.data) {
      const conv = el("td");
      if (a.conversation_id) {
        const b = el("button", { cls: "link", text: shortId(a.conversation_id), attrs: { type: "button", title: a.conversation_id } });
        b.addEventListener("click", () => openConversation(a.conversation_id, { focus: true }));
        conv.append(b);
      }
      const actor = (S.audit_actors && S.audit_actors[a.actor]) || (a.actor_name ? fill(S.audit_actor_named, { name: a.actor_name, username: a.actor }) : a.actor);
      body.append(el("tr", { attrs: { "data-action": a.action } }, [
        el("td", { text: time(a.at, true) }),
        el("td", { cls: "audit-actor", text: actor }),
        el("td", { cls: "audit-action", text: auditActionLabel(a.action), attrs: { title: a.action } }),
        conv,
        el("td", { text: a.detail }),
      ]));
    }
  }
  $("audit-form").addEventListener("submit", (e) => {
    e.preventDefault();
    refreshAudit();
  });
  $("audit-clear").addEventListener("click", () => {
    for (const id of ["audit-person", "audit-action", "audit-start", "audit-end"]) $(id).value = "";
    refreshAudit();
  });

  // -- administrators: accounts ---------------------------------------------------------------------------

  function setAccountsMessage(text, isError = false) {
    const p = $("accounts-msg");
    p.textContent = text;
    p.classList.toggle("error", isError);
  }

  // The API's refusals, in Japanese by status (the English detail tells the 422s apart).
  function accountError(r) {
    const detail = detailOf(r.data);
    if (r.status === 0) return S.network_error;
    if (r.status === 403) return S.accounts_forbidden;
    if (r.status === 404) return S.account_missing;
    if (r.status === 409) return S.account_exists;
    if (r.status === 422) return /that is you/.test(detail) ? S.account_self : S.account_invalid;
    return fill(S.account_failed, { detail: detail || r.status });
  }

  function accountFailed(r) {
    setAccountsMessage(accountError(r), true);
    if (r.status === 403) forbidden();
    else refreshAccounts();
  }

  // No longer an administrator (another one changed the role): said where it stays visible, and /me,
  // fetched again, takes the tab away.
  function forbidden() {
    flashMessage(S.accounts_forbidden);
    refreshLists();
  }

  // A username goes into the path; "." and ".." would be read by the browser as a path step, not a name.
  function accountPath(username, suffix = "") {
    if (username === "." || username === "..") return null;
    return "/accounts/" + encodeURIComponent(username) + suffix;
  }

  async function refreshAccounts() {
    if (!administers()) return;
    const r = await api("GET", "/accounts");
    if (!r.ok) {
      if (r.status === 403) accountFailed(r);
      return;
    }
    if (!administers() || !Array.isArray(r.data)) return;
    st.accounts = r.data;
    renderAccounts();
  }

  // Rows are kept and updated in place while the list of accounts is the same, so that a box being
  // typed in or a drop-down being used is not replaced under the administrator's hands.
  const accountRows = new Map(); // username -> { tr, update }

  function renderAccounts() {
    const body = $("accounts-body");
    const fallback = st.accounts.find((a) => a.custom_limit === null || a.custom_limit === undefined);
    const placeholder = fallback ? fill(S.account_limit_default, { n: fallback.limit }) : S.account_limit_default_unknown;
    const same = st.accounts.length === body.children.length
      && st.accounts.every((a, i) => body.children[i].dataset.username === a.username && accountRows.has(a.username));
    if (same) {
      for (const a of st.accounts) accountRows.get(a.username).update(a, placeholder);
      return;
    }
    const active = document.activeElement;
    const focused = active && body.contains(active) && active.dataset.control
      ? { username: active.closest("tr").dataset.username, control: active.dataset.control, value: active.value } : null;
    accountRows.clear();
    const rows = st.accounts.map((a) => {
      const r = accountRow(a.username);
      r.update(a, placeholder);
      accountRows.set(a.username, r);
      return r.tr;
    });
    body.replaceChildren(...rows);
    const again = focused && accountRows.get(focused.username);
    const control = again && again.tr.querySelector(`[data-control="${focused.control}"]`);
    if (control && !control.disabled) {
      if (control.tagName === "INPUT") control.value = focused.value; // what was being typed
      control.focus();
    }
  }

  function customLimit(a) {
    return a.custom_limit === null || a.custom_limit === undefined ? "" : String(a.custom_limit);
  }

  function accountRow(name) {
    let cur = null; // the account as last fetched
    const tr = el("tr", { attrs: { "data-username": name } }); // whatever the name is, it is text
    const who = el("td", { cls: "account-name" });

    const role = el("select", { cls: "account-role", attrs: { "aria-label": fill(S.account_role_label, { name }), "data-control": "role" } });
    for (const r of ROLES) role.append(el("option", { text: S["role_" + r], attrs: { value: r } }));
    role.addEventListener("change", () => changeAccount(name, { role: role.value }, () => { role.value = cur.role; }));

    const state = el("td");
    const duty = el("td");
    const load = el("td", { cls: "load" });

    const limit = el("input", {
      cls: "account-limit",
      attrs: {
        type: "number", min: "1", max: "20", step: "1", inputmode: "numeric",
        "aria-label": fill(S.account_limit_label, { name }), "data-control": "limit",
      },
    });
    let sent = null; // the value last sent or shown, so that Enter and then leaving the box send once
    const commit = () => {
      const raw = limit.value.trim();
      const bad = limit.validity.badInput;
      if (raw === sent && !bad) return;
      sent = raw;
      const undo = () => { limit.value = customLimit(cur); sent = limit.value; };
      changeAccount(name, { limit: raw === "" ? null : Number(raw) }, undo, bad);
    };
    limit.addEventListener("change", commit);
    limit.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.isComposing) { e.preventDefault(); commit(); }
    });

    const toggle = el("button", { attrs: { type: "button", "data-control": "active" } });
    toggle.addEventListener("click", () => {
      if (cur.active && !window.confirm(fill(S.account_disable_confirm, { name, held: cur.held }))) return;
      changeAccount(name, { active: !cur.active });
    });
    const reset = el("button", {
      cls: "btn btn-small btn-secondary",
      text: S.account_reset,
      attrs: { type: "button", "aria-label": S.account_reset + "：" + name, "data-control": "reset" },
    });
    reset.addEventListener("click", () => {
      if (window.confirm(fill(S.account_reset_confirm, { name }))) resetPassword(name);
    });

    tr.append(who, el("td", {}, [role]), state, duty, load, el("td", {}, [limit]), el("td", {}, [el("div", { cls: "account-actions" }, [toggle, reset])]));

    function update(a, placeholder) {
      cur = a;
      const self = !!st.me && name === st.me.username;
      tr.classList.toggle("inactive", !a.active);
      tr.dataset.active = String(!!a.active);
      who.replaceChildren(el("span", { cls: "username", text: name }));
      if (self) who.append(el("span", { cls: "tag", text: S.account_you }));
      if (a.must_change_password) who.append(el("span", { cls: "tag tag-pending", text: S.account_pending }));

      if (!ROLES.includes(a.role) && ![...role.options].some((o) => o.value === a.role)) {
        role.append(el("option", { text: a.role, attrs: { value: a.role } }));
      }
      if (document.activeElement !== role) role.value = a.role;
      role.disabled = self;
      role.title = self ? S.account_self_hint : "";

      state.className = a.active ? "account-active" : "account-inactive";
      state.textContent = a.active ? S.account_active : S.account_inactive;
      duty.className = a.on_duty ? "on-duty" : "off-duty";
      duty.textContent = a.on_duty ? S.on_duty : S.off_duty;
      load.textContent = fill(S.account_load, { held: a.held, limit: a.limit });

      limit.placeholder = placeholder;
      if (document.activeElement !== limit || sent === null) {
        limit.value = customLimit(a);
        sent = limit.value;
      }

      const label = a.active ? S.account_disable : S.account_enable;
      toggle.className = "btn btn-small " + (a.active ? "btn-danger-outline-dark" : "btn-secondary");
      toggle.textContent = label;
      toggle.setAttribute("aria-label", label + "：" + name);
      toggle.disabled = self;
      toggle.title = self ? S.account_self_hint : "";
    }

    return { tr, update };
  }

  async function changeAccount(username, body, undo = () => {}, invalid = false) {
    const path = accountPath(username);
    if (!path || invalid) {
      undo();
      setAccountsMessage(path ? S.account_invalid : S.account_unmanageable, true);
      return;
    }
    const r = await api("POST", path, body);
    if (!r.ok) {
      undo();
      if (r.status !== 401) accountFailed(r);
      return;
    }
    const a = r.data;
    let text;
    if ("active" in body) text = a.active ? fill(S.account_enabled, { name: username }) : fill(S.account_disabled, { name: username, n: Number(a.requeued) || 0 });
    else if ("role" in body) text = fill(S.account_role_changed, { name: username, role: S["role_" + a.role] || a.role });
    else if (a.custom_limit === null || a.custom_limit === undefined) text = fill(S.account_limit_reset, { name: username, limit: a.limit });
    else text = fill(S.account_limit_changed, { name: username, limit: a.limit });
    setAccountsMessage(text);
    if (Number(a.requeued) > 0) refreshLists(); // conversations are back in the queue
    await refreshAccounts();
  }

  async function resetPassword(username) {
    const path = accountPath(username, "/password");
    if (!path) { setAccountsMessage(S.account_unmanageable, true); return; }
    const r = await api("POST", path);
    if (!r.ok) {
      if (r.status !== 401) accountFailed(r);
      return;
    }
    setAccountsMessage(fill(S.account_password_reset, { name: r.data.username }));
    showOneTime(r.data.username, r.data.password);
    refreshAccounts();
  }

  $("account-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const username = $("account-username").value.trim();
    const limitBox = $("account-limit");
    const raw = limitBox.value.trim();
    if (!username) {
      setAccountsMessage(S.account_username_missing, true);
      $("account-username").focus();
      return;
    }
    if (limitBox.validity.badInput) {
      setAccountsMessage(S.account_invalid, true);
      limitBox.focus();
      return;
    }
    // The rules for names and limits are the server's: what it refuses comes back as a 422.
    const body = { username, role: $("account-role").value, limit: raw === "" ? null : Number(raw) };
    $("account-submit").disabled = true;
    const r = await api("POST", "/accounts", body);
    $("account-submit").disabled = false;
    if (!r.ok) {
      if (r.status !== 401) {
        setAccountsMessage(accountError(r), true);
        if (r.status === 403) forbidden();
        else $("account-username").focus();
      }
      return;
    }
    $("account-form").reset();
    setAccountsMessage(fill(S.account_added, { name: r.data.username }));
    showOneTime(r.data.username, r.data.password);
    refreshAccounts();
  });

  // A one-time password lives in this box only (never in the state, a log or storage), until it is
  // closed, another replaces it, the administrator leaves the view or logs out.
  function showOneTime(username, password) {
    clearOneTime();
    $("otp-for").textContent = fill(S.otp_for, { name: username });
    $("otp-password").textContent = password;
    show($("otp-box"), true);
    $("otp-box").focus();
  }

  function clearOneTime() {
    $("otp-for").textContent = "";
    $("otp-password").textContent = "";
    $("otp-copied").textContent = "";
    show($("otp-box"), false);
  }

  $("otp-close").addEventListener("click", () => {
    clearOneTime();
    $("account-username").focus();
  });

  $("otp-copy").addEventListener("click", async () => {
    const code = $("otp-password");
    try {
      await navigator.clipboard.writeText(code.textContent);
      $("otp-copied").textContent = S.otp_copied;
    } catch {
      // No clipboard (an insecure origin, or refused): select it for the keyboard's copy instead.
      const range = document.createRange();
      range.selectNodeContents(code);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      $("otp-copied").textContent = S.otp_copy_failed;
    }
  });

  // -- go -------------------------------------------------------------------------------------------------

  document.title = S.title;
  start();
})();
