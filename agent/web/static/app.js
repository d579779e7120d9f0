// Shortlist web app: helpers every page uses (no framework, no build step).
"use strict";
const Shortlist = (() => {
  let toastTimer = null;
  function toast(message, bad = false) {
    const el = document.getElementById("toast");
    if (!el) return;
    el.textContent = message;
    el.classList.toggle("bad", bad);
    el.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => el.classList.remove("show"), bad ? 6000 : 2500);
  }
  // A message for the page the browser goes to next (a toast before a navigation is never seen or heard):
  // kept in this tab's sessionStorage and shown, in the polite live region, once that page has loaded.
  const NEXT = "shortlist.toast";
  function toastNext(message) {
    try { sessionStorage.setItem(NEXT, message); } catch (e) { toast(message); }
  }
  // POST/GET JSON; resolves with the parsed body, rejects with Error(message from the server).
  async function api(method, url, body) {
    const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(url, opts);
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const err = new Error((data && data.message) || `${res.status} ${res.statusText}`);
      err.status = res.status;
      err.code = data && data.error;
      if (res.status === 401) {
        window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      }
      throw err;
    }
    return data;
  }
  // A page the browser shows again from its back/forward cache (Back after labelling, or after Sign out) is
  // the page as it was: load it anew, so it shows the labels now, or the sign-in page.
  window.addEventListener("pageshow", (ev) => { if (ev.persisted) window.location.reload(); });
  // The error page's "Back" link (a javascript: URL would break the Content-Security-Policy).
  document.addEventListener("DOMContentLoaded", () => {
    const back = document.getElementById("back");
    if (back) back.addEventListener("click", (e) => { if (history.length > 1) { e.preventDefault(); history.back(); } });
    let carried = null;
    try { carried = sessionStorage.getItem(NEXT); sessionStorage.removeItem(NEXT); } catch (e) { /* storage off */ }
    if (carried) setTimeout(() => toast(carried), 300);  // after load: a screen reader then hears the live region
  });
  return { toast, toastNext, api };
})();
