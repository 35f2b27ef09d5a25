// For administrators: the accounts.
import { $, administers, detailOf, el, fill, ROLES, S, show, st } from "./console-core.js";
import { api } from "./console-api.js";
import { flashMessage, refreshLists } from "./console-queue.js";

// -- administrators: accounts ---------------------------------------------------------------------------

export function setAccountsMessage(text, isError = false) {
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

export async function refreshAccounts() {
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
export const accountRows = new Map(); // username -> { tr, update }

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

export function clearOneTime() {
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
