// The console API: every request, with the CSRF token on unsafe ones.
import { API, S, st } from "./console-core.js";
import { sessionEnded } from "./console-session.js";

// -- the API -----------------------------------------------------------------------------------------

export async function api(method, path, body) {
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
