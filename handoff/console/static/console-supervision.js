// For supervisors: the overview, the statistics and the audit log.
import { $, API, categoryLabel, categoryTags, channelLabel, detailOf, duration, el, fill, nameOf, riskBadge, RISKS, S, shortId, st, supervises, time } from "./console-core.js";
import { api } from "./console-api.js";
import { renderWho } from "./console-session.js";
import { flashMessage } from "./console-queue.js";
import { openConversation } from "./console-conversation.js";

// -- supervisors ---------------------------------------------------------------------------------------

export async function refreshOverview() {
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

export async function refreshStats() {
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

export async function refreshAudit() {
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
