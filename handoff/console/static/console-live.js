// Live updates over the WebSocket, and the timers that refresh the lists.
import { $, API, POLL_MS, S, st, TICK_MS } from "./console-core.js";
import { api } from "./console-api.js";
import { refreshLists, tickWaits } from "./console-queue.js";
import { loadConversation, refreshColleagues } from "./console-conversation.js";
import { alarm } from "./console-alarm.js";
import { refreshOverview } from "./console-supervision.js";
import { refreshAccounts } from "./console-accounts.js";

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

export function connectLive() {
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

export function stopLive() {
  clearTimeout(liveTimer);
  if (live) {
    const ws = live;
    live = null;
    ws.close();
  }
}

export function later(timerName, fn, ms = 150) {
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
export function startTimers() {
  stopTimers();
  tickTimer = setInterval(tickWaits, TICK_MS);
  pollTimer = setInterval(() => {
    refreshLists();
    refreshColleagues();
    if (st.view === "supervisor") refreshOverview();
    if (st.view === "accounts") refreshAccounts();
  }, POLL_MS);
}
export function stopTimers() {
  clearInterval(tickTimer);
  clearInterval(pollTimer);
  for (const t of [listsTimer, convTimer, overviewTimer, colleaguesTimer, accountsTimer]) clearTimeout(t);
}
