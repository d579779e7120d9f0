// Shortlist web app: helpers every page uses (no framework, no build step).
"use strict";
const Shortlist = (() => {
  let toastTimer = null;
  // `silent`: shown but not spoken (the #toast region is a polite live region): for a message the page has
  // already said through its own live region (the Queue's #announce), so a screen reader hears it once; the
  // text sits in an aria-hidden span, which the live region does not read.
  let toasts = 0;  // toasts shown on this page: a notice carried from the last page never replaces a newer one
  function toast(message, bad = false, silent = false) {
    const el = document.getElementById("toast");
    if (!el) return;
    toasts += 1;
    if (silent) {
      const span = document.createElement("span");
      span.setAttribute("aria-hidden", "true");
      span.textContent = message;
      el.replaceChildren(span);
    } else {
      el.textContent = message;
    }
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
  // What the app says while the agent cannot be reached (agent/web/errors.py NOT_REACHABLE begins so).
  const NOT_REACHABLE = "the agent is not reachable";
  // What the page says when its own server does not answer at all (the web app is down, or the connection to
  // it): not the agent, which may well be up (`shortlist web` stopped while `shortlist serve` runs).
  const APP_AWAY = "the web app (this page's server) is not reachable";
  // POST/GET JSON; resolves with the parsed body, rejects with Error(message from the server). An error with
  // `unreachable` set: the request never reached the agent (the app answered that the agent is away, or no
  // answer came at all: `shortlist serve --web-port` restarting takes the app away with the agent; the
  // browser's own words, "Failed to fetch", are not shown).
  // Who this page was loaded for (base.html): sent with every write, percent-encoded (a header is latin-1), so
  // the app refuses it (409 SIGNED_IN_ELSEWHERE) when this browser has signed in as someone else since, in
  // another tab: the cookies are the browser's, and the write would otherwise go in under that person's name.
  const asMeta = document.querySelector('meta[name="shortlist-as"]');
  const pageAs = asMeta ? asMeta.getAttribute("content") : null;
  async function api(method, url, body) {
    const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (method !== "GET" && pageAs !== null) opts.headers["X-Shortlist-As"] = encodeURIComponent(pageAs);
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url, opts);
    } catch (e) {
      const err = new Error(`${APP_AWAY}: check that it runs and the connection; retrying`);
      err.status = 0;
      err.unreachable = true;
      err.appAway = true;
      throw err;
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const err = new Error((data && data.message) || `${res.status} ${res.statusText}`);
      err.status = res.status;
      err.code = data && data.error;
      err.unreachable = res.status === 503 && err.message.startsWith(NOT_REACHABLE);
      // signed in as someone else in another tab: not the 409 of a queue replaced meanwhile (its handlers look
      // at this); the message (what to do: reload) stays on the page until it is reloaded
      err.elsewhere = res.status === 409 && err.code === "SIGNED_IN_ELSEWHERE";
      if (err.elsewhere) elsewhere(err.message);
      if (res.status === 401) {
        // the sign-in is not accepted (token taken out of the tokens file, cookie gone): to the sign-in page,
        // which says why (a page may have carried a more precise notice meanwhile: what was not saved)
        if (!leaving) {
          leaving = true;
          toastNext("your sign-in is no longer accepted: sign in again");
          // after the caller's handlers (microtasks) have run: they may carry their own notice
          setTimeout(() => {
            window.location.href = "/login?next=" + encodeURIComponent(back || location.pathname + location.search);
          }, 0);
        }
      }
      throw err;
    }
    return data;
  }
  // The banner of a write refused because this browser signed in as someone else in another tab: kept (a toast
  // goes after 6 s, and every key pressed meanwhile would be refused the same way).
  function elsewhere(message) {
    let el = document.getElementById("elsewhere");
    if (!el) {
      el = document.createElement("p");
      el.id = "elsewhere";
      el.className = "error";
      el.setAttribute("role", "alert");
      const main = document.getElementById("main");
      if (main) main.prepend(el); else document.body.prepend(el);
    }
    el.textContent = message;
  }
  let leaving = false;  // on the way to the sign-in page
  // Sign out: this tab's kept lists (the Queue's undo history and what was not answered, sessionStorage
  // "shortlist.*") are cleared here, before the sign-out request. The app's answer also asks the browser to
  // clear them (Clear-Site-Data), but browsers act on that over https and on localhost only: over plain http
  // the next person at this tab could read them, and the labels not answered would be reported to whoever
  // signs in again. What was not answered is dropped (never sent after a sign-out): the confirmation says so.
  const KEPT = "shortlist.";
  let signingOutNow = false;
  function keptKeys(prefix) {  // the sessionStorage keys under a prefix; [] when storage is off
    const keys = [];
    try {
      for (let i = 0; i < sessionStorage.length; i++) {
        const k = sessionStorage.key(i);
        if (k && k.startsWith(prefix)) keys.push(k);
      }
    } catch (e) { /* storage off: nothing kept */ }
    return keys;
  }
  function unsentKept() {
    const ids = [];
    for (const k of keptKeys(KEPT + "unsent:")) {
      let list = [];
      try { list = JSON.parse(sessionStorage.getItem(k) || "[]"); } catch (e) { list = []; }
      if (Array.isArray(list)) for (const a of list) ids.push(String(a && a.id));
    }
    return ids;
  }
  function clearKept() {
    for (const k of keptKeys(KEPT)) {
      try { sessionStorage.removeItem(k); } catch (e) { /* storage off */ }
    }
  }
  function signOut(ev) {
    const ids = unsentKept();
    if (ids.length) {
      const shown = ids.slice(0, 5).join(", ") + (ids.length > 5 ? ` and ${ids.length - 5} more` : "");
      if (!window.confirm(`${ids.length} action(s) not saved yet (${shown}) will be dropped: they are not sent ` +
          "after you sign out. Sign out anyway?")) {
        ev.preventDefault();
        return;
      }
    }
    signingOutNow = true;  // the pages keep nothing from now on (queue.js keep) and do not ask again on leaving
    clearKept();
  }
  function signingOut() { return signingOutNow; }
  let back = "";  // where the sign-in page returns to: this page, or the page's own choice (returnTo)
  // The Queue page returns to its own page of the queue (/queue alone may pick another page after the sign-in).
  function returnTo(url) { back = url; }
  function signingIn() { return leaving; }
  // `call()` (an api call) again and again while the agent is not reachable (every 1 s, then up to every 5 s),
  // until it answers; `waiting(err)` is called once, at the first such failure. Other errors reject.
  async function patiently(call, waiting) {
    let delay = 1000, said = false;
    for (;;) {
      try {
        return await call();
      } catch (e) {
        if (!e.unreachable) throw e;
        if (!said && waiting) waiting(e);
        said = true;
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 5000);
      }
    }
  }
  // Before a new queue replaces the team's (Queue's "Ask the agent", Map's "Send to queue"): asks whether to go on
  // while the whole queue still has open samples (GET /api/queue?open=true). `pageOpen()`: the page's own count
  // of open samples, said when the app cannot count them; `go`: the question's last words ("Ask the agent
  // anyway?"). Resolves true to go on (nothing open, or the person agreed).
  async function confirmReplace(pageOpen, go) {
    let open = pageOpen(), said = `This page of the queue still has ${open} open sample(s).`;
    try {
      const q = await api("GET", "/api/queue?open=true");
      open = q.open;
      said = `The queue still has ${q.open.toLocaleString()} open sample(s) of ${q.total.toLocaleString()}.`;
    } catch (e) { /* the page's count */ }
    return !open || window.confirm(`${said} A new queue replaces ` +
      `the team's queue and its skip / not sure marks for everyone. ${go}`);
  }
  // A page the browser shows again from its back/forward cache (Back after labelling, or after Sign out) is
  // the page as it was: load it anew, so it shows the labels now, or the sign-in page.
  window.addEventListener("pageshow", (ev) => { if (ev.persisted) window.location.reload(); });
  // The error page's "Back" link (a javascript: URL would break the Content-Security-Policy).
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll('form[action="/logout"]').forEach((f) => f.addEventListener("submit", signOut));
    const back = document.getElementById("back");
    if (back) back.addEventListener("click", (e) => { if (history.length > 1) { e.preventDefault(); history.back(); } });
    let carried = null;
    try { carried = sessionStorage.getItem(NEXT); sessionStorage.removeItem(NEXT); } catch (e) { /* storage off */ }
    // after load, so that a screen reader hears the live region; not over a notice this page showed meanwhile
    // (on a slow machine a key pressed within those 300 ms had its notice replaced by the older one)
    if (carried) setTimeout(() => { if (!toasts) toast(carried); }, 300);
    // a narrow window (601 to 700 px: app.css; a phone shows every link whole on a line of its own): the top
    // bar's links may scroll sideways; the current page's link is brought into view, so the bar says where one is
    const nav = document.querySelector(".nav"), here = nav && nav.querySelector("a.active");
    if (here && nav.scrollWidth > nav.clientWidth) {
      nav.scrollLeft += here.getBoundingClientRect().left - nav.getBoundingClientRect().left - 24;
    }
  });
  // A control reached with Tab is shown whole (WCAG 2.4.11), after the browser's own scroll into view (next
  // frame), which does not know what covers it: in the top bar's sideways-scrolling row of links (601-700 px), a
  // link half under the brand is scrolled into the row; on a page with the fixed Classes bar at the bottom (a
  // narrow window, 200% zoom), a control under the bar is scrolled up above it.
  document.addEventListener("focusin", (ev) => {
    const t = ev.target;
    if (!(t instanceof Element)) return;
    requestAnimationFrame(() => {
      if (document.activeElement !== t) return;
      const r = t.getBoundingClientRect();
      const nav = t.closest(".nav");
      if (nav) {
        const n = nav.getBoundingClientRect(), fade = 20;  // the row's fade on its right (app.css)
        if (r.left < n.left) nav.scrollLeft -= n.left - r.left + 4;
        else if (r.right > n.right - fade) nav.scrollLeft += r.right - (n.right - fade) + 4;
        return;
      }
      const bar = document.getElementById("class-panel");
      if (!bar || bar.contains(t) || getComputedStyle(bar).position !== "fixed") return;
      const top = bar.getBoundingClientRect().top;
      // not a control taller than the room above the bar (the grid, which brings its own tile into view)
      if (r.bottom > top - 4 && r.height < top - 60) window.scrollBy(0, r.bottom - top + 12);
    });
  });
  // The URL of sample `id`'s thumbnail or image (`kind`: "thumb" or "image"), as agent/web/images.py
  // image_url builds it: the whole id percent-encoded as one path segment (a "/" inside it too), else the
  // browser resolves "." and ".." segments and "ward7/../img000.png" would fetch img000.png's image; an id
  // that is "." or ".." itself (a dot segment even when encoded as %2e) goes in the query instead.
  function imageUrl(kind, id, query = "") {
    const base = (id === "." || id === "..") ? `/${kind}/?id=${encodeURIComponent(id)}` : `/${kind}/${encodeURIComponent(id)}`;
    return query ? base + (base.includes("?") ? "&" : "?") + query : base;
  }
  return { toast, toastNext, api, patiently, imageUrl, returnTo, signingIn, signingOut, confirmReplace, APP_AWAY };
})();
