// The console's shared parts: its strings, the state it shows, and small helpers to build the page.
// Whatever a person or a counsellor wrote is put in the page with textContent, never as HTML.

export const API = "/api/console";
export const S = JSON.parse(document.getElementById("strings").textContent);
export const $ = (id) => document.getElementById(id);
export const RISKS = ["crisis", "high", "medium", "low"];
export const ROLES = ["counsellor", "supervisor", "admin"];
export const TICK_MS = 5000; // waiting times are updated this often
export const POLL_MS = 30000; // a safety net: events are best-effort, so the lists are refetched this often

export const st = {
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

export function fill(template, values) {
  return String(template).replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));
}

export function el(tag, { cls, text, attrs } = {}, children = []) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) if (c) e.append(c);
  return e;
}

// How a colleague is named on the page: the display name people read, else the username.
export function nameOf(display, username) {
  return String(display || "") || String(username || "");
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}

export function supervises() {
  return !!st.me && (st.me.role === "supervisor" || st.me.role === "admin");
}

export function administers() {
  return !!st.me && st.me.role === "admin";
}

export function duration(seconds) {
  const t = Math.max(0, Math.floor(seconds));
  if (t < 60) return fill(S.seconds, { s: t });
  if (t < 3600) return fill(S.minutes, { m: Math.floor(t / 60), s: String(t % 60).padStart(2, "0") });
  return fill(S.hours, { h: Math.floor(t / 3600), m: Math.floor((t % 3600) / 60) });
}

export function time(iso, withDate = false) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const opts = withDate
    ? { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" }
    : { hour: "2-digit", minute: "2-digit" };
  return d.toLocaleString("ja-JP", opts);
}

export function riskBadge(risk) {
  const r = RISKS.includes(risk) ? risk : "low";
  const badge = el("span", { cls: "risk risk-" + r, attrs: { "data-risk": r } });
  badge.append(el("span", { cls: "visually-hidden", text: S.risk_prefix }), document.createTextNode(S["risk_" + r]));
  return badge;
}

export function categoryLabel(c) {
  return c ? (S.categories[c] || c) : S.no_category;
}

export function categoryTags(list) {
  const wrap = el("span", { cls: "cats" });
  for (const c of list || []) wrap.append(el("span", { cls: "cat", text: categoryLabel(c) }));
  return wrap;
}

export function channelLabel(c) {
  return S.channels[c] || c || "";
}

export function detailOf(data) {
  if (data && typeof data.detail === "string") return data.detail;
  if (data && Array.isArray(data.detail)) return data.detail.map((d) => d.msg || "").join(" ");
  return "";
}

export function show(node, visible) {
  node.hidden = !visible;
}
