// The queue and my conversations.
import { $, categoryTags, channelLabel, detailOf, duration, el, fill, riskBadge, S, shortId, show, st, time } from "./console-core.js";
import { api } from "./console-api.js";
import { dutyPending, renderTabs, renderWho } from "./console-session.js";
import { dialogueFlags, openConversation, reasonLabel, widen, wordBounds } from "./console-conversation.js";
import { alarm, settleAlarm, unlockAudio } from "./console-alarm.js";

// -- the queue and my conversations ----------------------------------------------------------------

let refreshing = null;
export async function refreshLists() {
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
export function previewQuote(preview, reason) {
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

export function renderPresence(c) {
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

export function tickWaits() {
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

export function renderHeld() {
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

export function hideClaimWarning() {
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
export function setConvMessage(text, isError = false) {
  const p = $("conv-msg");
  p.textContent = text;
  p.classList.toggle("error", isError);
  // A message about an action is about that moment: it goes after a while, so that an old refusal is
  // not read as being about what the counsellor does next.
  clearTimeout(setConvMessage.timer);
  if (text) setConvMessage.timer = setTimeout(() => { if (p.textContent === text) setConvMessage(""); }, 20000);
}

export function flashMessage(text) {
  const p = $("app-msg");
  p.textContent = text;
  clearTimeout(flashMessage.timer);
  flashMessage.timer = setTimeout(() => { p.textContent = ""; }, 15000);
}
