// The crisis alarm: a sound, a flashing title, a notification, a banner.
import { $, S, show, st } from "./console-core.js";
import { openConversation } from "./console-conversation.js";

// -- the crisis alarm: a sound, a flashing title, a notification, a banner --------------------------

let audio = null;
export function unlockAudio() {
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
export function alarm(id) {
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

export function settleAlarm() {
  const needed = stillNeeded();
  for (const id of [...st.alarmed]) if (!needed(id)) st.alarmed.delete(id);
  if (!st.alarmed.size) stopAlarm();
  else if (!st.alarmed.has(st.lastCrisis)) st.lastCrisis = [...st.alarmed].pop();
}

export function stopAlarm() {
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

export function renderNotifyButton() {
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
