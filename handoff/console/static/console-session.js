// The session: logging in and out, the one-time password, my display name and duty, the tabs.
import { $, administers, detailOf, el, fill, S, show, st, supervises } from "./console-core.js";
import { api } from "./console-api.js";
import { loadReference } from "./console-reference.js";
import { flashMessage, refreshLists } from "./console-queue.js";
import { connectLive, startTimers, stopLive, stopTimers } from "./console-live.js";
import { renderNotifyButton, stopAlarm, unlockAudio } from "./console-alarm.js";
import { refreshAudit, refreshOverview, refreshStats } from "./console-supervision.js";
import { accountRows, clearOneTime, refreshAccounts, setAccountsMessage } from "./console-accounts.js";

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
export async function start() {
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

export function sessionEnded(info) {
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

export function renderWho() {
  const role = S["role_" + st.me.role] || st.me.role;
  $("who").textContent = st.me.display_name
    ? fill(S.who_named, { name: st.me.display_name, username: st.me.username, role })
    : fill(S.who, { username: st.me.username, role });
  $("name-current").textContent = st.me.display_name ? fill(S.name_current, { name: st.me.display_name }) : S.name_unset;
}

// -- my display name: what people read in greetings (never the username) ------------------------------

export function openNameForm(reason = "") {
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

export let dutyPending = 0; // while a change is on its way, a refetched /me must not undo the box
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

export function selectView(name) {
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
export function renderTabs() {
  show($("tab-supervisor"), supervises());
  show($("tab-accounts"), administers());
  if ((st.view === "supervisor" && !supervises()) || (st.view === "accounts" && !administers())) selectView("console");
}
