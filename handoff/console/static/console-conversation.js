// One conversation: its transcript, notes, replies, transfer and close. A read older than the one
// shown (its version, from the API) is dropped.
import { $, API, categoryTags, channelLabel, detailOf, el, fill, nameOf, riskBadge, S, shortId, show, st, supervises, time } from "./console-core.js";
import { api } from "./console-api.js";
import { selectView, start } from "./console-session.js";
import { hideClaimWarning, previewQuote, refreshLists, renderHeld, renderPresence, setConvMessage } from "./console-queue.js";
import { later } from "./console-live.js";
import { settleAlarm } from "./console-alarm.js";

// -- one conversation ---------------------------------------------------------------------------------

let convLoading = null;
export async function openConversation(id, { focus = false, force = false } = {}) {
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

export async function loadConversation(id, force = false) {
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
    // A slower read begun earlier may arrive after a newer one: what it says is older than what is
    // shown, by the conversation's version, and is dropped.
    const shown = st.conv && st.conv.conversation_id === id ? st.conv.version : undefined;
    if (typeof shown === "number" && typeof r.data.version === "number" && r.data.version < shown) {
      $("conv").dataset.dropped = String(r.data.version);
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
  $("conv").dataset.version = String(c.version);
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
export function wordBounds(text) {
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

export function widen(a, b, bounds, length) {
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
export function dialogueFlags(reasons) {
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
export function reasonLabel(r) {
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
export async function refreshColleagues() {
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
