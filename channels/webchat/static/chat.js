// The web chat page. Leaves nothing behind: only the resume token, in sessionStorage (gone when the
// tab closes); the transcript lives in the page alone. Everything received is shown as text.
"use strict";
(() => {
  const TOKEN_KEY = "tsunagi.token";
  const strings = JSON.parse(document.getElementById("strings").textContent);
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const choices = document.getElementById("choices");
  const form = document.getElementById("composer");
  const input = document.getElementById("input");
  const exitButton = document.getElementById("quick-exit");
  const attach = document.getElementById("attach");
  const attachFile = document.getElementById("attach-file");
  const attachError = document.getElementById("attach-error");
  const MAX_IMAGE_BYTES = 8 * 1024 * 1024; // the server refuses more

  let ws = null;
  let leaving = false;
  let retry = 0;
  let composing = false;
  let replaying = false;
  // Sent but not yet acknowledged: resent (same id, stored once) after a reconnect. Memory only.
  const unacked = new Map();

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, (_, k) => (k in values ? String(values[k]) : ""));
  }

  function addMessage(from, text, { pendingId = null } = {}) {
    const item = document.createElement("li");
    item.setAttribute("role", "article"); // a message in the log (role=log takes the list's semantics away)
    item.className = "from-" + from + (pendingId ? " pending" : "");
    if (pendingId) item.dataset.id = pendingId;
    const who = document.createElement("span");
    // A counsellor's words carry a visible label (not told apart by colour alone); the others say who
    // spoke to screen readers only.
    who.className = from === "counsellor" ? "who" : "visually-hidden";
    who.textContent = (strings[from === "user" ? "you" : from] || "") + (from === "counsellor" ? "" : ": ");
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    if (from === "user") bubble.textContent = text; // never innerHTML: what people write is text
    else appendLinked(bubble, text);
    item.append(who, bubble);
    log.append(item);
    toBottom(); // what was said last is what the person must read
    return item;
  }

  // Only the conversation scrolls (chat.css): it stays at its bottom when it changes size (choices shown
  // or gone, the phone's keyboard opening) unless the person has scrolled up to read.
  let follow = true;
  let placed = -1; // where the page itself last put the scroll: its own scrolls say nothing of the person
  function toBottom() {
    log.scrollTop = log.scrollHeight;
    placed = log.scrollTop;
    follow = true;
  }
  log.addEventListener("scroll", () => {
    if (Math.abs(log.scrollTop - placed) < 2) return;
    follow = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  });
  if (window.ResizeObserver) new ResizeObserver(() => { if (follow) toBottom(); }).observe(log);

  // Phone numbers in what the bot or a counsellor says can be tapped: tel: links built as text nodes, never
  // HTML. 0120-279-338, 0570-783-556, 0120-0-78310, #9110, #8008; and 110 / 119 / 189 where they are
  // written as a number to call ("110（警察）", "・警察 110（24時間）"), never inside a name (みんなの人権110番).
  const PHONE = /#\d{4}(?!\d)|(?<![\d-])0\d{1,4}-\d{1,4}-\d{3,5}(?![\d-])|(?<![\d-])(?:110|119|189)(?=[（(\s、。・]|$)/g;
  function appendLinked(container, text) {
    let pos = 0;
    for (const m of text.matchAll(PHONE)) {
      if (m.index > pos) container.append(document.createTextNode(text.slice(pos, m.index)));
      const a = document.createElement("a");
      a.className = "tel";
      a.href = "tel:" + m[0].replace("#", "%23");
      a.textContent = m[0];
      container.append(a);
      pos = m.index + m[0].length;
    }
    if (pos < text.length) container.append(document.createTextNode(text.slice(pos)));
  }

  function showChoices(list) {
    choices.replaceChildren();
    for (const label of list || []) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.addEventListener("click", () => send(label));
      choices.append(b);
    }
  }

  function setStatus(state, position) {
    let text = strings["status_" + state] || "";
    if (state === "waiting" && position) text = fill(strings.status_waiting_position, { position });
    status.textContent = text;
    status.className = "status status-" + state;
  }

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function send(text) {
    if (!text.trim()) return;
    const id = newId();
    const item = addMessage("user", text, { pendingId: id });
    unacked.set(id, { text, item, frame: { type: "message", text, id } });
    showChoices([]);
    if (!replaying) transmit(unacked.get(id).frame);
  }

  // A picture from the attach button: sent as base64; the page shows only that it was sent (the picture
  // itself is not kept in the page either).
  function sendImage(file) {
    attachError.hidden = true;
    if (!file) return;
    if (!/^image\//.test(file.type)) return showAttachError(strings.image_not_picture);
    if (file.size > MAX_IMAGE_BYTES) return showAttachError(strings.image_too_large);
    const reader = new FileReader();
    reader.addEventListener("load", () => {
      const data = String(reader.result).replace(/^data:[^,]*,/, "");
      const id = newId();
      const item = addMessage("user", strings.image_sent, { pendingId: id });
      unacked.set(id, { text: strings.image_sent, item, frame: { type: "image", data, name: file.name, id } });
      showChoices([]);
      if (!replaying) transmit(unacked.get(id).frame);
    });
    reader.readAsDataURL(file);
  }

  function showAttachError(text) {
    attachError.textContent = text;
    attachError.hidden = false;
  }

  function transmit(frame) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(frame));
    }
  }

  function connect() {
    if (leaving) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(scheme + "//" + location.host + "/chat/ws");
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ type: "hello", resume: sessionStorage.getItem(TOKEN_KEY) }));
    });
    ws.addEventListener("message", (ev) => {
      let frame;
      try { frame = JSON.parse(ev.data); } catch { return; }
      if (frame.type === "session") {
        sessionStorage.setItem(TOKEN_KEY, frame.token);
        retry = 0;
        // The server now sends the history (or, for a new session, the welcome), then a status frame:
        // the page is rebuilt from it, and what it still holds unacknowledged follows, in order.
        log.replaceChildren();
        replaying = true;
      } else if (frame.type === "message") {
        if (frame.from === "user") {
          // Our own line, replayed: if we were still holding it, it was stored after all.
          if (frame.id) unacked.delete(frame.id);
          addMessage("user", frame.kind === "image" ? strings.image_sent : frame.text);
          return;
        }
        addMessage(frame.from === "counsellor" ? "counsellor" : "bot", frame.text);
        if (!frame.history) showChoices(frame.quick_replies);
      } else if (frame.type === "ack") {
        const m = unacked.get(frame.id);
        if (m) { m.item.classList.remove("pending"); delete m.item.dataset.id; unacked.delete(frame.id); }
      } else if (frame.type === "status") {
        setStatus(frame.state, frame.position);
        if (replaying) {
          replaying = false;
          for (const [id, m] of unacked) {
            m.item.remove();
            m.item = addMessage("user", m.text, { pendingId: id });
            transmit(m.frame);
          }
        }
      }
    });
    ws.addEventListener("close", () => {
      if (leaving) return;
      status.textContent = strings.reconnecting;
      const delay = Math.min(15000, 500 * 2 ** retry++);
      setTimeout(connect, delay);
    });
  }

  // Enter sends; Shift+Enter is a new line; Enter that confirms a Japanese IME conversion never sends.
  input.addEventListener("compositionstart", () => { composing = true; });
  input.addEventListener("compositionend", () => { setTimeout(() => { composing = false; }, 0); });
  input.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.shiftKey) return;
    if (e.isComposing || composing || e.keyCode === 229) return;
    e.preventDefault();
    form.requestSubmit();
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    send(text);
    input.focus();
  });

  // Quick exit: forget the token, drop the page, and replace it (no way back with the Back button).
  function quickExit() {
    leaving = true;
    try { sessionStorage.clear(); } catch { /* storage may be disabled */ }
    unacked.clear();
    if (ws) {
      // Tell the server first (sent before the close), so that the counsellor knows the person has gone.
      try { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "bye", reason: "quick_exit" })); } catch { /* gone anyway */ }
      ws.close();
    }
    log.replaceChildren();
    document.title = "";
    location.replace(exitButton.dataset.url || "about:blank");
  }
  exitButton.addEventListener("click", quickExit);
  attach.addEventListener("click", () => attachFile.click());
  attachFile.addEventListener("change", () => {
    sendImage(attachFile.files && attachFile.files[0]);
    attachFile.value = ""; // the same picture can be chosen again
  });
  let lastEscape = 0;
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    const now = Date.now();
    if (now - lastEscape < 800) quickExit();
    lastEscape = now;
  });

  // A phone has no Shift+Enter to speak of: its placeholder says only where to write.
  if (window.matchMedia && matchMedia("(pointer: coarse), (max-width: 40rem)").matches && input.dataset.placeholderTouch) {
    input.placeholder = input.dataset.placeholderTouch;
  }
  status.textContent = strings.connecting;
  connect();
  input.focus();
})();
