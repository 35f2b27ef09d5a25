// Reference data: canned replies, outcomes and the referral directory.
import { $, el, fill, S, st } from "./console-core.js";
import { api } from "./console-api.js";
import { openNameForm, start } from "./console-session.js";

// -- reference data: canned replies, outcomes, the referral directory ---------------------------------

export async function loadReference() {
  const [c, r] = await Promise.all([api("GET", "/canned"), api("GET", "/referrals")]);
  if (c.ok) {
    st.canned = c.data.canned || [];
    st.outcomes = c.data.outcomes || [];
  }
  if (r.ok) st.referrals = r.data || [];
  const chips = $("canned-list");
  chips.replaceChildren();
  for (const item of st.canned) {
    const b = el("button", { cls: "chip", text: item.label, attrs: { type: "button", title: item.text } });
    b.addEventListener("click", () => insertCanned(String(item.text)));
    chips.append(b);
  }
  const select = $("close-outcome");
  select.replaceChildren(el("option", { text: S.choose, attrs: { value: "" } }));
  for (const o of st.outcomes) select.append(el("option", { text: o.label, attrs: { value: o.code } }));
  const refs = $("close-refs-list");
  refs.replaceChildren();
  for (const ref of st.referrals) {
    const id = "close-ref-" + ref.id;
    const box = el("input", { attrs: { type: "checkbox", id, value: ref.id } });
    refs.append(el("div", { cls: "check" }, [box, el("label", { text: ref.name + " " + ref.number, attrs: { for: id } })]));
  }
  renderReferrals(st.referrals);
}

// A canned reply: {name} is my display name (never the username: the person reads it); without one,
// I am asked for it first. Sentences already in the draft are not inserted again, so that canned
// replies combine without saying anything twice.
function insertCanned(text) {
  if (text.includes("{name}") && !st.me.display_name) {
    openNameForm(S.name_needed);
    return;
  }
  const filled = fill(text, { name: st.me.display_name });
  const draft = $("reply").value;
  const fresh = sentencesOf(filled).filter((x) => !draft.includes(x));
  if (fresh.length) insertReply(fresh.join(""));
}

function sentencesOf(text) {
  return String(text).match(/[^。！？!?\n]+[。！？!?]*/g) || [];
}

function insertReply(text) {
  const box = $("reply");
  if (box.closest("[hidden]")) return;
  const start = box.selectionStart ?? box.value.length;
  const end = box.selectionEnd ?? box.value.length;
  box.setRangeText(text, start, end, "end");
  box.dispatchEvent(new Event("input", { bubbles: true }));
  box.focus();
}

let refTimer = null;
$("ref-q").addEventListener("input", () => {
  clearTimeout(refTimer);
  refTimer = setTimeout(async () => {
    const q = $("ref-q").value.trim();
    const r = await api("GET", "/referrals?q=" + encodeURIComponent(q));
    if (r.ok) renderReferrals(r.data);
  }, 250);
});

function renderReferrals(list) {
  const ul = $("ref-results");
  ul.replaceChildren();
  if (!list.length) {
    ul.append(el("li", { cls: "empty", text: S.referrals_none }));
    return;
  }
  for (const ref of list) {
    const head = el("div", { cls: "ref-head" }, [
      el("strong", { text: ref.name }),
      document.createTextNode(" " + ref.number + " "),
      el("span", { cls: ref.open_now ? "open-now" : "closed-now", text: ref.open_now ? S.open_now : S.closed_now }),
    ]);
    const b = el("button", { cls: "btn btn-small", text: S.insert, attrs: { type: "button", "aria-label": S.insert + "：" + ref.name } });
    b.addEventListener("click", () => {
      insertReply(ref.line);
      // Given in a reply: ticked in the close form's referrals already (it can be unticked).
      const box = document.getElementById("close-ref-" + ref.id);
      if (box) box.checked = true;
    });
    ul.append(el("li", { cls: "ref", attrs: { "data-referral": ref.id } }, [
      head,
      el("div", { cls: "ref-for", text: ref.for + "（" + ref.hours + "）" }),
      b,
    ]));
  }
}
