// Queue page: keyboard labelling, undo, skip / not sure, new classes, and the strategy chooser.
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("queue-data").textContent);
  const grid = document.getElementById("grid");
  const tiles = grid ? Array.from(grid.querySelectorAll(".tile")) : [];
  const HOTKEYS = "1234567890abcdefghijklmnopqrstuvwxyz";
  const keyOf = {};  // hotkey -> class name
  for (const [key, name] of data.classes) if (key) keyOf[key] = name;
  // A class given for the first time (open class list) joins the list with the next free key.
  function addClass(name) {
    if (data.classes.some(([, n]) => n === name)) return;
    const key = HOTKEYS[data.classes.length] || "";
    data.classes.push([key, name]);
    if (key) keyOf[key] = name;
    const li = document.createElement("li");
    li.dataset.class = name;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "class-btn";
    button.dataset.class = name;
    const kbd = document.createElement("kbd");
    kbd.textContent = key;
    const span = document.createElement("span");
    span.textContent = name;
    button.append(kbd, " ", span);
    li.appendChild(button);
    document.getElementById("classes").appendChild(li);
    const none = document.getElementById("no-classes");
    if (none) none.remove();
  }
  function bumpLabelled(delta) {
    const el = document.getElementById("labelled-count");
    if (el) el.textContent = (Number(el.dataset.n) + delta).toLocaleString("en");
    if (el) el.dataset.n = Number(el.dataset.n) + delta;
  }
  // One entry per label / mark key press, pushed when the key is pressed: {tile, label (before), mark (before),
  // given (the label given; undefined for a mark), kind, state, done, by, seq}. state: "pending" while the agent
  // has not answered (done: a promise of the answer), then "saved", "refused" (not stored: undo has nothing to
  // take back and says so, rather than reaching for an earlier entry) or "agreed" (the sample already had that
  // label, given by `by`: undo leaves it as it is). `behind`: pressed while this page's own request for the tile
  // was on its way, and not yet sent (it is sent, in its turn, against the label that request leaves).
  // `seq`: the key press's place in time (and `useq` the Backspace's), to put a tile's actions in key order.
  // Kept in this tab's sessionStorage, so they outlive a reload, Back and the sign-in page:
  // - HIST_KEY (per annotator, queue and page): the answered entries, so Backspace after a reload takes back
  //   the last label that was saved.
  // - UNSENT_KEY (per annotator only: a label is on a sample, not on a queue, so a queue replaced meanwhile does
  //   not hide it): what the agent had not answered when the page went (labels and marks pending, undos not
  //   answered). Nothing of it is sent again: a copy sent after the page went cannot say which label and whose
  //   it expected (if_current is a label only), and the first copy may still be on its way. The next queue page
  //   asks the agent what each of those samples has now (reportUnsent) and says which were not saved.
  const undoStack = [];
  const undoing = new Set();  // taken off by Backspace, their undo not answered yet
  const HIST_KEY = `shortlist.undo:${data.annotator}:${data.created}:${data.page}`;
  const UNSENT_PREFIX = "shortlist.unsent:";
  const UNSENT_KEY = UNSENT_PREFIX + data.annotator;
  let seqN = 0;
  const nextSeq = () => Date.now() * 1000 + (seqN++ % 1000);  // in key order across pages of one tab
  const stored = (e) => ({ id: e.tile.dataset.id, label: e.label, mark: e.mark, given: e.given, kind: e.kind,
    state: e.state, by: e.by, replaced: e.replaced, seq: e.seq });
  // Storage full or off (a private window's limits, a site setting): said at once, since a reload then loses
  // the undo history and the list of what was not saved (the page itself works on).
  let storageBroken = false;
  function keep(key, value) {
    if (Shortlist.signingOut()) return;  // Sign out cleared this tab's lists: an answer arriving now keeps nothing
    try {
      if (value === null) sessionStorage.removeItem(key); else sessionStorage.setItem(key, value);
    } catch (e) {
      if (!storageBroken) {
        storageBroken = true;
        Shortlist.toast("this browser tab cannot keep the page's history (storage full or turned off): a reload " +
          "or leaving this page loses your undo history and the list of labels not saved yet; wait until a " +
          "label shows saved before leaving", true);
      }
    }
  }
  // The previous page's unanswered actions, until reportUnsent has said what became of them (a reload before
  // that keeps them for the next page).
  let carried = [];
  function saveUndo() {
    keep(HIST_KEY, JSON.stringify(undoStack.filter((e) => e.state !== "pending").slice(-200).map(stored)));
    const unsent = carried.concat(
      undoStack.filter((e) => e.state === "pending").map((e) => ({ ...stored(e), seq: e.seq,
        act: e.given !== undefined ? "label" : "mark" })),
      [...undoing].map((e) => ({ ...stored(e), seq: e.useq, act: "undo" })));
    keep(UNSENT_KEY, unsent.length ? JSON.stringify(unsent) : null);
  }
  try {
    for (const e of JSON.parse(sessionStorage.getItem(HIST_KEY) || "[]")) {
      const tile = tiles.find((t) => t.dataset.id === e.id);
      // a pending one: kept by an older version of this page (nothing was sent again): not in the history
      if (!tile || e.state === "pending") continue;
      undoStack.push({ label: e.label, mark: e.mark, given: e.given, kind: e.kind, state: e.state || "saved",
        by: e.by, replaced: e.replaced, seq: e.seq, tile });
    }
  } catch (e) { /* storage off or unreadable: an empty history */ }
  try { carried = JSON.parse(sessionStorage.getItem(UNSENT_KEY) || "[]"); } catch (e) { carried = []; }
  if (!Array.isArray(carried)) carried = [];
  // Another person's unanswered actions in this tab (their sign-in ended, then someone else signed in here):
  // never sent under this name; said once, so that they know to label them again, and dropped.
  const othersUnsent = [];
  try {
    for (let i = 0; i < sessionStorage.length; i++) {
      const k = sessionStorage.key(i);
      if (k && k.startsWith(UNSENT_PREFIX) && k !== UNSENT_KEY) othersUnsent.push(k);
    }
  } catch (e) { /* storage off */ }
  let focus = 0;
  // The label the focused tile showed when it got the focus (what the annotator saw): a label sent for it is
  // stored only while the sample still has it (if_current), so a label someone gave since, shown by a refresh
  // while the annotator was looking elsewhere, is not overwritten by a tap meant for the tile as it was.
  let seen = "";
  // Whether the person picked the focused tile themselves (a click or tap on it) and the focus has not moved
  // since (no label, key, undo or refresh moved it): a class button then labels it even when it has been
  // scrolled off screen, since the person chose that image (see visibleOrShown).
  let chosen = false;

  // ---- strategy chooser: built from the registry's describe() -----------------------------------
  const strategySelect = document.getElementById("strategy");
  const paramsBox = document.getElementById("params");
  const summary = document.getElementById("strategy-summary");
  function showStrategy() {
    const s = data.strategies.find((x) => x.name === strategySelect.value);
    paramsBox.innerHTML = "";
    summary.textContent = s ? s.short : "";
    summary.title = s ? s.summary : "";
    if (!s) return;
    for (const p of s.params) {
      const label = document.createElement("label");
      label.textContent = p.name + " ";
      label.title = p.doc;
      let input;
      if (p.kind === "choice") {
        input = document.createElement("select");
        for (const c of p.choices) {
          const o = document.createElement("option");
          o.value = c; o.textContent = c;
          input.appendChild(o);
        }
        input.value = (data.params && data.params[p.name]) || p.default;
      } else {
        input = document.createElement("input");
        input.type = "number";
        input.step = p.kind === "int" ? "1" : "any";
        if (p.lo !== null) input.min = p.lo;
        if (p.hi !== null) input.max = p.hi;
        input.placeholder = `default ${p.default}`;
        if (data.params && data.params[p.name] !== undefined) input.value = data.params[p.name];
      }
      input.name = "param:" + p.name;
      const hint = document.createElement("span");
      hint.className = "small muted";
      hint.textContent = p.range;
      label.append(input, hint);
      paramsBox.appendChild(label);
    }
  }
  if (strategySelect) {
    strategySelect.addEventListener("change", showStrategy);
    showStrategy();
  }
  const ask = document.getElementById("ask");
  // "Only samples with metadata": comma-separated key=value parts; {where} or {error} (a part that is not
  // key=value, said in the person's words: dropped silently, the draw was unfiltered and replaced the queue).
  function parseWhere(text) {
    const where = {};
    for (const raw of String(text || "").split(",")) {
      const part = raw.trim();
      if (!part) continue;
      const at = part.indexOf("=");
      const k = at < 0 ? "" : part.slice(0, at).trim();
      if (!k) {
        return { error: `"Only samples with metadata": "${part}" is not key=value; write each condition as ` +
          "key=value, separated by commas (site=a, camera=3). Nothing was asked; the queue is as it was" };
      }
      where[k] = part.slice(at + 1).trim();
    }
    return { where };
  }
  if (ask) ask.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    // a malformed filter is refused before anything is asked (and before the replace question)
    const filter = parseWhere(new FormData(ask).get("where"));
    if (filter.error) {
      Shortlist.toast(filter.error, true);
      const field = ask.querySelector("input[name=where]");
      field.setCustomValidity(filter.error);
      field.reportValidity();
      field.addEventListener("input", () => field.setCustomValidity(""), { once: true });
      return;
    }
    // The queue is the team's: a new one replaces it, and its skip / not sure marks, for everyone.
    // The whole queue's open samples (not only this page's): asked of the app now, this page's if that fails.
    if (!await Shortlist.confirmReplace(() => tiles.filter(isOpen).length, "Ask the agent anyway?")) return;
    const form = new FormData(ask);
    const params = {};
    for (const [k, v] of form.entries()) if (k.startsWith("param:") && String(v).trim() !== "") params[k.slice(6)] = String(v);
    const where = filter.where;
    const button = document.getElementById("ask-button");
    button.disabled = true;
    button.textContent = "Asking…";
    try {
      const res = await Shortlist.api("POST", "/api/queue/select",
        { strategy: form.get("strategy"), budget: Number(form.get("budget")), params, where, if_created: data.created });
      Shortlist.toastNext(`${res.total} samples from ${res.strategy}`);  // said on the page it loads
      window.location.href = "/queue";
    } catch (e) {
      Shortlist.toast(e.message, true);
      // 409: someone replaced the queue since this page showed it (if_created): show the queue now instead
      if (e.status === 409 && !e.elsewhere) setTimeout(() => { window.location.href = "/queue"; }, 1500);
    } finally {
      button.disabled = false;
      button.textContent = "Ask the agent";
    }
  });

  // ---- grid -------------------------------------------------------------------------------------
  function setFocus(i, scroll = true) {
    if (!tiles.length) return;
    focus = Math.max(0, Math.min(tiles.length - 1, i));
    chosen = false;
    tiles.forEach((t, j) => {
      t.classList.toggle("focus", j === focus);
      t.setAttribute("aria-selected", j === focus ? "true" : "false");
    });
    // screen readers follow the grid's active descendant: the tile in focus, with its aria-label
    document.getElementById("grid").setAttribute("aria-activedescendant", tiles[focus].id);
    seen = tiles[focus].dataset.label || "";
    showTarget();
    if (scroll) tiles[focus].scrollIntoView({ block: "nearest" });
  }
  // The Classes panel shows the image a class button (or key) labels: its thumbnail, id and state.
  function showTarget() {
    const box = document.getElementById("target");
    if (!box || !tiles.length) return;
    const tile = tiles[focus];
    const img = box.querySelector("img");
    const src = tile.querySelector("img").getAttribute("src");
    if (img.getAttribute("src") !== src) img.setAttribute("src", src);
    box.querySelector("[data-role=target-name]").textContent = tile.getAttribute("aria-label");
  }
  // Whether the tile is on screen: at least half of it inside the window, below the sticky top bar and above
  // the class bar (narrow screens). A key never labels or marks a tile the annotator cannot see.
  function onScreen(tile) {
    const r = tile.getBoundingClientRect();
    const top = document.querySelector(".topbar");
    const bar = document.getElementById("class-panel");
    const lo = top ? Math.max(0, top.getBoundingClientRect().bottom) : 0;
    let hi = window.innerHeight;
    if (bar && getComputedStyle(bar).position === "fixed") hi = Math.min(hi, bar.getBoundingClientRect().top);
    const h = Math.min(r.bottom, hi) - Math.max(r.top, lo);
    const w = Math.min(r.right, window.innerWidth) - Math.max(r.left, 0);
    return h >= r.height / 2 && w >= r.width / 2;
  }
  // A key or button meant for the focused tile while it is off screen: show it first instead of acting on an
  // image the annotator has not seen (the focus may have moved there by itself: the name-hashed start, or the
  // move to the next open tile after a label, possibly thousands of pixels away). Not lost silently: the
  // notice says to do it again, in the words of the input used. `how`: "key", or for a button the click's
  // pointerType ("touch", "mouse", "pen", or "" from the keyboard). A button acts on a tile off screen that
  // the person picked themselves and that is still the focused one (`chosen`): on a short window reaching
  // the buttons can scroll it away, and the person knows which image they picked (the Classes panel shows it).
  function visibleOrShown(how = "key") {
    const tile = tiles[focus];
    if (!tile || onScreen(tile)) return true;
    if (how !== "key" && chosen) return true;
    setFocus(focus, true);
    const again = how === "key" ? "press the key again" : how === "touch" ? "tap the button again"
      : how === "mouse" || how === "pen" ? "click the button again" : "press the button again";
    const text = `${shortId(tile)} was off screen: it is shown now; ${again} to act on it`;
    Shortlist.toast(text, false, true);  // said once, by #announce (the toast is a live region too)
    announce(text);
    return false;
  }
  // What a screen reader hears: said once (a live region), e.g. "fis_046.jpg labelled fish".
  function announce(text) {
    const el = document.getElementById("announce");
    if (el) el.textContent = text;
  }
  function columns() {
    if (tiles.length < 2) return 1;
    const top = tiles[0].offsetTop;
    const n = tiles.findIndex((t) => t.offsetTop !== top);
    return n < 0 ? tiles.length : n;
  }
  function badge(tile) { return tile.querySelector("[data-role=badge]"); }
  // The tile's state as shown ("circle", "circle … waiting", "not saved", "" for open) and, with it, its
  // accessible name: what the tile shows (number, file name), then the state, so a screen reader (and the
  // Classes panel, which copies the name) hears every state the eye sees (queue.html builds the first one).
  function setBadge(tile, text) {
    badge(tile).textContent = text;
    const short = shortId(tile), num = tile.querySelector(".num").textContent;
    tile.setAttribute("aria-label", `${num} ${short}: ${text || "not labelled"}` +
      (short !== tile.dataset.id ? ` (${tile.dataset.id})` : ""));
    if (tile === tiles[focus]) showTarget();
  }
  function show(tile) {
    const label = tile.dataset.label, mark = tile.dataset.mark;
    tile.classList.toggle("labelled", !!label);
    tile.classList.remove("mark-skip", "mark-unsure");
    if (!label && mark) tile.classList.add("mark-" + mark);
    const state = label || (mark === "skip" ? "skipped" : mark === "unsure" ? "not sure" : "");
    setBadge(tile, state);
    badge(tile).classList.remove("sending");
    if (tile === tiles[focus]) showTarget();
    updateCount();
  }
  let pageDone = null;
  function updateCount() {
    const done = tiles.filter((t) => t.dataset.label || t.dataset.mark).length;
    const el = document.getElementById("done-count");
    if (el) el.textContent = done;
    const all = tiles.length > 0 && done === tiles.length;
    if (all && pageDone === false) pageFinished();
    pageDone = all;
  }
  const QUEUE_DONE = "Queue done: ask the agent for the next samples";
  async function pageFinished() {
    if (data.pages <= 1) { Shortlist.toast(QUEUE_DONE); return; }
    // Other pages may be done too (by this person or the team): the whole queue's open count says which toast
    // (`]`, Next, goes to the next page with open samples that nobody else has open: agent/web/queue.py)
    let open = 1;
    try { open = (await Shortlist.api("GET", "/api/queue?open=true")).open; } catch (e) { /* say "page" */ }
    Shortlist.toast(open === 0 ? QUEUE_DONE : "Page done: ] for the next page with open samples");
  }
  function isOpen(tile) { return !tile.dataset.label && !tile.dataset.mark; }
  // The next open tile after `from`, wrapping round to the page's start (a focus that starts mid-page).
  function nextOpen(from) {
    for (let k = 1; k < tiles.length; k++) {
      const j = (from + k) % tiles.length;
      if (isOpen(tiles[j])) return j;
    }
    return Math.min(from + 1, tiles.length - 1);
  }
  // Where this annotator's focus starts: the open tiles of the page, counted from a stable hash of the
  // annotator's name, so annotators sharing the queue start on different tiles instead of all on the first
  // one (and, moving on, skip what the others labelled: see refresh). It does not keep them apart: two who
  // meet walk on together; labels are conditional, so a differing second label is refused and shows the
  // first, an agreeing one is stored for both (docs/app.md, "Overlap on a shared queue").
  function startTile() {
    const open = tiles.map((t, i) => i).filter((i) => isOpen(tiles[i]));
    if (!open.length) return 0;
    let h = 0;
    for (const ch of data.annotator || "") h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return open[h % open.length];
  }

  function shortId(tile) { return tile.dataset.id.split("/").pop(); }
  // Each tile's requests (label, undo, mark) go to the agent one after another, in the order the keys were
  // pressed: "wrong key, Backspace, right key" on a slow connection ends with the right label, never with the
  // right label refused because the wrong one (this page's own) arrived first and its undo after.
  // `tile._busy`: requests of this page queued or on their way for the tile (refresh leaves such a tile be).
  function inTurn(tile, fn) {
    tile._busy = (tile._busy || 0) + 1;
    const run = (tile._turn || Promise.resolve()).then(fn);
    tile._turn = run.catch(() => {}).then(() => { tile._busy -= 1; });
    return run;
  }
  // The sample was labelled (or its label taken back) by someone else since this page showed it: the
  // agent refused the conditional write, so show its label now and say who changed it; nothing is resent.
  function changedMeanwhile(tile, rejection, what) {
    const now = rejection.label || "";
    tile._changed = (tile._changed || 0) + 1;  // a key press queued behind this request no longer knows the label
    if (now && !tile.dataset.label) bumpLabelled(1);
    if (!now && tile.dataset.label) bumpLabelled(-1);
    if (now) addClass(now);
    tile.dataset.label = now;
    tile.dataset.saved = "";
    tile.classList.remove("pending", "failed");
    tile.classList.add("changed");
    show(tile);
    if (tile === tiles[focus]) seen = now;
    // the annotator's own name: a label or undo of theirs from another tab or page (this page's own are
    // sent in turn, against what they leave)
    const who = !rejection.by ? "someone" : rejection.by === data.annotator ? "you (on another page or tab)" : rejection.by;
    const did = now ? `${who} labelled it "${now}" meanwhile` : `${who} took its label back meanwhile`;
    Shortlist.toast(`${shortId(tile)}: ${what}: ${did}; the tile shows it now`, true);
  }
  // This page's own label or undo was stored and the tile shows its result: while the tile has the focus, the
  // next key for it is sent against that result. `seen` was taken when the focus came (an undo brings its
  // tile into focus when Backspace is pressed, before the agent has taken the label back): left as it was,
  // "wrong key, Backspace, right key" sent the right key against the wrong label and the agent refused it
  // as changed meanwhile, by the annotator themselves. Someone else's change (refresh) never comes here.
  function ownLabelShown(tile) {
    if (tile === tiles[focus]) seen = tile.dataset.label || "";
  }
  // Store `label` for the tile's sample only if its label is still `ifCurrent` (what this page showed,
  // "" = open; the agent refuses it otherwise). Resolves false when not stored, else "saved", or, when the
  // sample already had that label from someone else (an agreement the page had not seen), who gave it:
  // {by}.
  // `speak`: say "X labelled Y" in #announce (an undo says its own notice instead: one message, said once).
  async function sendLabel(tile, label, ifCurrent, what = "your label was not saved", speak = true) {
    tile.classList.remove("failed", "changed");
    tile.classList.add("pending");
    setBadge(tile, label + " …");
    let res, waited = false;
    try {
      // the agent away (restarting): said once, then sent again until it answers, in its turn (inTurn)
      res = await Shortlist.patiently(
        () => Shortlist.api("POST", "/api/labels", { labels: [{ id: tile.dataset.id, label, if_current: ifCurrent }] }),
        (e) => { waited = true; away(tile, `${label} … waiting`, `your label "${label}" is sent again`, e); });
    } catch (e) {
      if (e.status === 401) throw e;  // signed out: the entry is kept and sent after the sign-in (signedOut)
      res = { rejected: [{ reason: e.message }] };
    }
    // A refusal that finds the sample with this very label from this annotator (a label sent again after a
    // reload whose first send was still on its way when the page loaded: both reached the agent) is this label
    // stored, not a change by someone else meanwhile.
    const r0 = res.rejected[0];
    if (r0 && r0.changed && r0.label === label && r0.by === data.annotator) res = { ...res, rejected: [] };
    if (res.rejected.length) {
      const r = res.rejected[0];
      if (r.changed) { changedMeanwhile(tile, r, what); return false; }
      tile.classList.remove("pending");
      tile.classList.add("failed");
      setBadge(tile, "not saved");
      Shortlist.toast(`${shortId(tile)}: ${r.reason}`, true);
      return false;
    }
    if (!tile.dataset.label) bumpLabelled(1);
    addClass(label);
    tile.dataset.label = label;
    tile.classList.remove("pending");
    tile.dataset.saved = "1";
    show(tile);
    ownLabelShown(tile);
    // one notice, said once: after a wait, the toast's words, spoken by #announce (the toast silent)
    const again = `the agent answers again: ${shortId(tile)} labelled ${label}`;
    if (speak) announce(waited ? again : `${shortId(tile)} labelled ${label}`);
    if (waited) Shortlist.toast(again, false, speak);
    // the same image (byte for byte) under another id carries another label: stored, but worth a look
    const twin = (res.twin_conflicts || []).find((t) => t.id === tile.dataset.id);
    if (twin) Shortlist.toast(`${shortId(tile)}: saved as ${label}, but ${twin.twin_id} (the same image) is labelled ${twin.twin_label}`, true);
    const agreed = (res.agreed || []).find((a) => a.id === tile.dataset.id);
    if (agreed) return { by: agreed.by || "someone" };
    // one label a request: counted among the agreements but not listed (the agent lists the first ones only) is
    // this one, and not this page's own either: its undo leaves it
    if ((res.agreed_count || 0) > (res.agreed || []).length) return { by: "someone else (the agent's answer did not say who)" };
    // the label this one replaced was someone else's: who gave it (an undo puts it back in their name)
    const replaced = (res.overwritten || []).find((o) => o.id === tile.dataset.id);
    return replaced ? { replaced: replaced.by || "someone" } : "saved";
  }
  // The agent cannot be reached (restarting), or this page's own server (the web app, or the connection to it:
  // `err.appAway`, no answer at all): the tile says it waits, and a notice says what happens (the request is
  // sent again once it answers; nothing to do but wait). The notice names which: with the app down and the
  // agent up, "the agent is not reachable" sent a labeller to look at the wrong process.
  function away(tile, text, what, err) {
    if (text) setBadge(tile, text);
    const who = err && err.appAway ? Shortlist.APP_AWAY : "the agent is not reachable";
    // storage full or off: a reload loses what waits, so the notice of the wait says it every time
    const said = `${shortId(tile)}: ${who}; ${what} as soon as it answers` + (storageBroken
      ? " — keep this page open: this browser tab cannot keep it over a reload (storage full or off)" : "");
    Shortlist.toast(said, true, true);  // said once, by #announce
    announce(said);
  }
  // Undo: the agent takes the label back (RetractLabels) only if it is still `given` (the label this page
  // gave); a label someone else gave since stays. Of a first label (`before` ""), the sample is unlabelled
  // again; of a change, the label before (`before`) comes back in the name of whoever gave it (restore_previous).
  async function sendRetract(tile, given, before = "") {
    tile.classList.remove("failed", "changed");
    tile.classList.add("pending");
    setBadge(tile, "undo …");
    let res;
    try {
      res = await Shortlist.patiently(
        () => Shortlist.api("POST", "/api/labels/retract", { ids: [tile.dataset.id], if_current: { [tile.dataset.id]: given }, restore_previous: !!before }),
        (e) => away(tile, "undo … waiting", "your undo is sent again", e));  // undoOne's notice follows once it answers
    } catch (e) {
      if (e.status === 401) throw e;  // signed out: the entry is kept and sent after the sign-in (signedOut)
      res = { rejected: [{ reason: e.message }] };
    }
    // A refusal that finds the sample as this undo leaves it (a resend of an undo that was applied, its answer
    // lost: the agent says so) is the undo done, not a change by someone else meanwhile.
    const r0 = res.rejected[0];
    if (r0 && r0.changed && (r0.label || "") === before) res = { rejected: [] };
    if (res.rejected.length) {
      const r = res.rejected[0];
      if (r.changed) { changedMeanwhile(tile, r, "your undo was not applied"); return false; }
      tile.classList.remove("pending");
      tile.classList.add("failed");
      setBadge(tile, "not undone");
      Shortlist.toast(`${shortId(tile)}: ${r.reason}`, true);
      return false;
    }
    if (!before) bumpLabelled(-1);
    tile.dataset.label = before;
    tile.classList.remove("pending");
    tile.dataset.saved = before ? "1" : "";
    show(tile);  // said by undoOne's notice
    ownLabelShown(tile);
    return true;
  }
  async function sendMark(tile, mark) {
    // a skip or not sure shows while on its way, as a label's "cat …" does (presentation only: show() below or
    // in the catch redraws the tile from its data); a mark taken off (mark "") shows the tile as it is
    const what = mark === "skip" ? "skip" : "not sure";
    if (mark) { setBadge(tile, `${what} …`); badge(tile).classList.add("sending"); }
    try {
      await Shortlist.patiently(() => Shortlist.api("POST", "/api/queue/mark", { id: tile.dataset.id, mark }),
        (e) => away(tile, mark ? `${what} … waiting` : null, mark ? `your ${mark === "skip" ? "skip" : "not sure mark"} is sent again` : "sent again", e));
    } catch (e) {
      show(tile);
      // 404: the sample is not in the queue the agent has now: someone replaced the queue since this page loaded
      if (e.status === 404) {
        e.message = `${shortId(tile)} was not ${mark === "skip" ? "skipped" : mark ? "marked not sure" : "changed"}: ` +
          "someone replaced the queue with a new one since this page was loaded, and this image is not in it. " +
          "Labels given here are still stored; use the link at the top to show the new queue";
        showReplaced();
      }
      throw e;
    }
    tile.dataset.mark = mark;
    show(tile);
  }

  async function label(name) {
    if (!tiles.length) return;
    if (!data.can_label) { Shortlist.toast("your token can view but not label: sign in with a write token", true); return; }
    const tile = tiles[focus];
    // `given`: what undo takes back (only while the sample still has it); the label is stored only if the
    // sample still has the label this page shows (if_current), so a label given elsewhere is never overwritten.
    // Pressed while this page's own label or undo for the tile is on its way (`behind`): sent once those are
    // answered, on the label they left (what the annotator is acting on), unless one of them found the sample
    // changed by someone else: then on the label the tile showed, which the agent refuses, saying who changed it.
    const before = { tile, label: seen, mark: tile.dataset.mark, given: name, state: "pending", behind: tile._busy > 0,
      seq: nextSeq() };
    undoStack.push(before);  // now, at the key press: a Backspace right after it means this label
    saveUndo();
    setFocus(nextOpen(focus));
    await sendLabelEntry(before);
  }
  // Sends a label entry in its turn among the tile's requests.
  function sendLabelEntry(before) {
    const tile = before.tile, changed = tile._changed || 0;
    before.done = inTurn(tile, async () => {
      if (before.behind && (tile._changed || 0) === changed) {
        before.label = tile.dataset.label || "";
        before.mark = tile.dataset.mark;
      }
      before.behind = false;
      let ok;
      try { ok = await sendLabel(tile, before.given, before.label); } catch (e) {
        if (e.status === 401) { signedOut(before); return; }
        throw e;
      }
      before.state = !ok ? "refused" : ok.by ? "agreed" : "saved";
      if (ok && ok.by) before.by = ok.by;
      if (ok && ok.replaced) before.replaced = ok.replaced;
      saveUndo();
      if (ok && before.mark) await sendMark(tile, "").catch(() => {});
    });
    return before.done;
  }
  async function mark(kind) {
    if (!tiles.length) return;
    if (!data.can_label) { Shortlist.toast("your token can view but not mark: skip and not sure need a write token; sign in with one", true); return; }
    const tile = tiles[focus];
    const before = { tile, label: tile.dataset.label, mark: tile.dataset.mark, kind, state: "pending", seq: nextSeq() };
    undoStack.push(before);
    saveUndo();
    setFocus(nextOpen(focus));
    await sendMarkEntry(before);
  }
  function sendMarkEntry(before) {
    const tile = before.tile, kind = before.kind;
    before.done = inTurn(tile, () => sendMark(tile, kind)).then(() => {
      before.state = "saved";
      announce(`${shortId(tile)} ${kind === "skip" ? "skipped" : "marked not sure"}`);  // as a label is said
    },
      (e) => {
        if (e.status === 401) { signedOut(before); return; }
        before.state = "refused"; Shortlist.toast(e.message, true);
      }).then(saveUndo);
    return before.done;
  }
  // The app no longer accepts the sign-in (token taken out of the tokens file, cookie gone): Shortlist.api goes
  // to the sign-in page, which says why and what was not saved; the entry stays in the tab's list of what was
  // not answered, and the queue page opened after the sign-in says it was not saved (reportUnsent).
  let unsentSaid = false;
  function signedOut(entry) {
    saveUndo();
    if (unsentSaid) return;
    unsentSaid = true;
    const what = entry.undoing ? "your undo" : entry.given !== undefined ? `your label "${entry.given}"`
      : entry.kind === "skip" ? "your skip" : "your not sure mark";
    Shortlist.toastNext(`your sign-in is no longer accepted: sign in again. ${what} on ${shortId(entry.tile)} ` +
      "was not saved: give it again after you sign in");
  }
  // Each Backspace takes its entry off the list when it is pressed (the last key press's) and takes its turn
  // among the tile's requests then: an undo of a label still on its way waits for the agent's answer first,
  // and a key pressed after the Backspace waits for the undo.
  function undo() {
    const last = undoStack.pop();
    if (!last) { Shortlist.toast("nothing to undo"); return; }
    last.useq = nextSeq();
    undoing.add(last);
    saveUndo();
    setFocus(tiles.indexOf(last.tile));
    sendUndo(last);
  }
  function sendUndo(last) {
    inTurn(last.tile, () => undoOne(last)).then(() => { undoing.delete(last); saveUndo(); }, (e) => {
      if (e.status === 401) { last.undoing = true; signedOut(last); return; }
      undoing.delete(last);
      saveUndo();
      Shortlist.toast(e.message, true);
    });
  }
  async function undoOne(last) {
    const tile = last.tile, id = shortId(tile);
    if (last.state === "pending") {
      Shortlist.toast(`undo: waiting for ${id}'s ${last.given !== undefined ? "label" : "mark"} to be saved…`);
      await last.done;
    }
    const what = last.given !== undefined ? `label "${last.given}"` : last.kind === "skip" ? "skip" : "not sure mark";
    if (last.state === "refused") {
      Shortlist.toast(`nothing to undo: your last ${what} on ${id} was not saved`, true);
      return;
    }
    if (last.state === "agreed") {
      Shortlist.toast(`${id} was already labelled "${last.given}" by ${last.by || "someone"}; left as it is`, true);
      return;
    }
    // Undo reverses this page's own action only: the label it gave goes (or the one before comes back) only
    // while the sample still has the label it gave; someone else's label since is left as it is.
    if (last.given !== undefined && last.given !== last.label) {
      const ok = await sendRetract(tile, last.given, last.label || "");
      if (!ok) {
        if (!tile.classList.contains("changed")) { undoing.delete(last); undoStack.push(last); saveUndo(); }  // not reached: can be tried again
        return;
      }
    }
    if ((tile.dataset.mark || "") !== (last.mark || "")) await sendMark(tile, last.mark || "");
    // The label put back is recorded as its giver's (restore_previous): the notice names them when that is
    // someone else. Shown in the toast and said once, by #announce (the toast, a live region too, is silent here).
    const said = last.given === undefined ? `undo: ${id}: ${what} taken back`
      : last.label && last.replaced ? `undo: ${id} is ${last.replaced}'s "${last.label}" again (your "${last.given}" taken back)`
        : last.label ? `undo: ${id} is "${last.label}" again (your "${last.given}" taken back)`
          : `undo: ${id}: your label "${last.given}" taken back`;
    announce(said);
    Shortlist.toast(said, false, true);
  }
  // The large view: a modal dialog; the focus goes to its Close button and comes back where it was.
  let lightboxFrom = null;
  function lightbox(open) {
    const box = document.getElementById("lightbox");
    if (!open) {
      if (box.hidden) return;
      box.hidden = true;
      // back where the focus was (the grid, or a control); from the page's body, to the grid: the focus must
      // leave the hidden Close button, or the next keys would go to it
      const from = lightboxFrom;
      lightboxFrom = null;
      const back = from && from !== document.body && document.contains(from) ? from : grid;
      if (back) back.focus({ preventScroll: true });
      if (box.contains(document.activeElement)) document.activeElement.blur();
      return;
    }
    const tile = tiles[focus];
    const img = box.querySelector("img");
    img.src = Shortlist.imageUrl("image", tile.dataset.id);
    img.alt = tile.dataset.id;
    box.querySelector("p").textContent = tile.dataset.id + (tile.dataset.label ? " · " + tile.dataset.label : "");
    box.setAttribute("aria-label", `large view of ${tile.dataset.id}`);
    lightboxFrom = document.activeElement;
    box.hidden = false;
    document.getElementById("lightbox-close").focus();
  }
  const lb = document.getElementById("lightbox");
  if (lb) {
    lb.addEventListener("click", () => lightbox(false));
    lb.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" || ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); lightbox(false); }
      else if (ev.key === "Tab") ev.preventDefault();  // modal: the Close button is its only control
      ev.stopPropagation();
    });
  }

  const newClass = document.getElementById("new-class");
  const newInput = document.getElementById("new-class-input");
  if (newClass) newClass.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = newInput.value.trim();
    if (!name) return;
    newInput.value = "";
    newInput.blur();
    await label(name);
  });
  // The class buttons and Skip / Not sure / Undo: the same actions as the keys, for touch and pointer (and
  // for Tab + Enter). A pointer press does not take the focus from the grid, so the keys go on working.
  // As with the keys, a button never acts on a tile off screen (it is shown first). The second click of a
  // double click (ev.detail > 1) on a class, Skip or Not sure does nothing: the first one labelled (marked) the
  // focused tile and moved the focus on, and the second would act on the next image, unseen. (Undo twice in a
  // row is two undos: each brings its tile back into focus.)
  const panel = document.getElementById("class-panel");
  if (panel) {
    panel.addEventListener("mousedown", (ev) => { if (ev.target.closest("button")) ev.preventDefault(); });
    panel.addEventListener("click", (ev) => {
      const button = ev.target.closest("button");
      if (!button || !panel.contains(button)) return;
      if (ev.detail > 1 && (button.matches(".class-btn") || ["skip", "unsure"].includes(button.dataset.act))) {
        Shortlist.toast("a double click counts as one click: click again to act on the next image");
        return;
      }
      const how = ev.pointerType || "";
      const cls = button.closest("button.class-btn");
      if (cls) { if (visibleOrShown(how)) label(cls.dataset.class); return; }
      const act = button.closest("button[data-act]");
      if (!act) return;
      if (act.dataset.act === "skip") { if (visibleOrShown(how)) mark("skip"); }
      else if (act.dataset.act === "unsure") { if (visibleOrShown(how)) mark("unsure"); }
      else if (act.dataset.act === "undo") undo();
    });
  }
  // The narrow-screen class bar is fixed at the bottom: the page leaves room for it, and a tile brought into
  // view is not put under it (the tiles' scroll-margin-bottom).
  function barHeight() {
    const fixed = panel && getComputedStyle(panel).position === "fixed";
    document.documentElement.style.setProperty("--bar-h", `${fixed ? Math.ceil(panel.getBoundingClientRect().height) : 0}px`);
  }
  if (panel) {
    barHeight();
    window.addEventListener("resize", barHeight);
    if (window.ResizeObserver) new ResizeObserver(barHeight).observe(panel);
  }
  // Keyboard focus reaching the grid (Tab) brings its focused tile into view; a click or tap does not scroll.
  if (grid) grid.addEventListener("focus", () => { if (grid.matches(":focus-visible")) setFocus(focus, true); });
  tiles.forEach((t, i) => {
    t.addEventListener("click", () => { setFocus(i, false); chosen = true; });
    t.addEventListener("dblclick", () => { setFocus(i, false); lightbox(true); });
  });

  // The shortcut keys act only while the focus is on the grid (or on nothing: the page's body): on a link, a
  // button, a form field or the large view, Enter, Space and the letters do what they do there.
  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    const tag = (t.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea") {
      if (ev.key === "Escape") t.blur();
      return;
    }
    const box = document.getElementById("lightbox");
    if (box && !box.hidden) {  // its own handler has the keys; a key from elsewhere closes it on Escape
      if (ev.key === "Escape") { lightbox(false); ev.preventDefault(); }
      return;
    }
    if (!(t === document.body || t === document.documentElement || (grid && grid.contains(t)))) return;
    if (ev.altKey || ev.metaKey) return;
    if (ev.ctrlKey) {
      if (ev.key === "z") { ev.preventDefault(); undo(); }
      return;
    }
    const cols = columns();
    const go = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols }[ev.key];
    if (go !== undefined) { ev.preventDefault(); setFocus(focus + go); return; }
    if (ev.key === " ") { ev.preventDefault(); if (visibleOrShown()) mark("skip"); return; }
    if (ev.key === "?") { ev.preventDefault(); if (visibleOrShown()) mark("unsure"); return; }
    if (ev.key === "Backspace") { ev.preventDefault(); undo(); return; }
    if (ev.key === "Enter") { ev.preventDefault(); lightbox(true); return; }
    if (ev.key === "+" && newInput) { ev.preventDefault(); newInput.focus(); return; }
    if (ev.key === "]") { const a = document.getElementById("next-page"); if (a) a.click(); return; }
    if (ev.key === "[") { const a = document.getElementById("prev-page"); if (a) a.click(); return; }
    const name = keyOf[ev.key.toLowerCase()];
    if (name !== undefined && ev.key.length === 1) { ev.preventDefault(); if (visibleOrShown()) label(name); return; }
    // a class key with no class behind it (3 with two classes): said, not ignored in silence
    if (/^[0-9a-z]$/i.test(ev.key)) {
      ev.preventDefault();
      Shortlist.toast(`no class on key ${ev.key.toLowerCase()}` + (newInput ? ": press + to type a new class" : ""));
    }
  });
  let replacedSaid = false;
  // The banner at the top: the queue was replaced, with a link to the new one.
  function showReplaced() {
    const note = document.getElementById("queue-replaced");
    if (note) note.hidden = false;
    replacedSaid = true;
  }
  // The keys stay as they are until a reload; when the agent's class list no longer matches them (a class
  // added elsewhere in another order, or one whose labels were all taken back), say that a reload renumbers.
  function checkClasses(agentClasses) {
    const here = data.classes.map(([, n]) => n);
    const same = agentClasses.length === here.length && agentClasses.every((n, i) => n === here[i]);
    const note = document.getElementById("classes-changed");
    if (note) note.hidden = same;
  }
  // Labels given elsewhere (another annotator, a gRPC client) show up without a reload.
  async function refresh() {
    if (document.hidden || !tiles.length) return;
    let res;
    try { res = await Shortlist.api("GET", `/api/queue?page=${data.page}`); } catch (e) { return; }
    if (res.created !== data.created && !replacedSaid) {  // someone asked for new samples (or sent a map selection)
      showReplaced();
      Shortlist.toast("the queue was replaced by a new one: reload the page to see it");
    }
    // classes first seen here join the keys in sorted order (not in tile order: the same for everyone)
    const fresh = [...new Set(res.items.map((it) => it.label))].filter((n) => n && !data.classes.some(([, c]) => c === n));
    fresh.sort().forEach(addClass);
    const byId = new Map(res.items.map((it) => [it.id, it]));
    const focused = tiles[focus], before = focused && `${focused.dataset.label || ""}|${focused.dataset.mark || ""}`;
    for (const tile of tiles) {
      const it = byId.get(tile.dataset.id);
      if (!it || tile.classList.contains("pending") || tile._busy > 0) continue;
      if (it.label !== (tile.dataset.label || "") || it.mark !== (tile.dataset.mark || "")) {
        if (it.label && !tile.dataset.label) bumpLabelled(1);
        if (!it.label && tile.dataset.label) bumpLabelled(-1);  // taken back elsewhere
        if (it.label) addClass(it.label);
        tile.dataset.label = it.label;
        tile.dataset.mark = it.mark;
        tile.classList.remove("failed");
        // done by someone else since this page showed it: amber, and the focus's move on passes it by
        tile.classList.toggle("changed", !!(it.label || it.mark));
        show(tile);
      }
    }
    if (res.classes) checkClasses(res.classes);
    // Someone else labelled (or skipped) the focused tile: the focus stays on it (a tap or key meant for it
    // never lands on another image), the tile and the Classes panel show it, and a screen reader hears it. A
    // label sent for it now is refused while it differs from what the tile showed when focused (see `seen`).
    if (focused && !focused.classList.contains("pending")
        && before !== `${focused.dataset.label || ""}|${focused.dataset.mark || ""}`) {
      const text = `${shortId(focused)} was ${focused.dataset.label ? `labelled "${focused.dataset.label}"`
        : focused.dataset.mark ? "marked" : "unlabelled"} by someone else meanwhile`;
      focused.classList.add("changed");
      chosen = false;  // no longer the image the person picked: a button shows it again before acting
      announce(text);
    }
  }
  setInterval(refresh, data.refresh_ms);

  // The focused tile in view on load (else the first key or tap would only bring it into view).
  setFocus(startTile(), !!grid);
  updateCount();
  // What the page before had not seen answered when it went (a reload, Back, another page of the queue, the
  // sign-in page): nothing is sent again. The agent is asked what each of those samples has now, and who gave
  // it, and the page says which were not saved, to be given again. A label the agent has from this person
  // counts as saved (its answer went with the page) and joins the undo history; the same label from someone
  // else is theirs (Backspace leaves it); an undo not applied while the sample still has this person's label
  // goes back on the undo history, so Backspace takes it back.
  // A tab duplicated from this one (the browser copies the tab's storage) finds the actions this page is still
  // sending in its list: it asks the open queue pages (BroadcastChannel) and leaves those to the page that sends
  // them. A page left for good no longer answers.
  let channel = null;
  try { channel = new BroadcastChannel("shortlist.queue"); } catch (e) { channel = null; }
  const elsewhere = new Set();  // seqs another open page says it is sending
  if (channel) {
    channel.onmessage = (ev) => {
      const m = ev.data || {};
      if (m.who !== data.annotator) return;
      if (Array.isArray(m.ask)) {
        const sending = new Set(undoStack.filter((e) => e.state === "pending").map((e) => e.seq)
          .concat([...undoing].map((e) => e.useq)));
        const have = m.ask.filter((q) => sending.has(q));
        if (have.length) channel.postMessage({ who: data.annotator, have });
      } else if (Array.isArray(m.have)) for (const q of m.have) elsewhere.add(q);
    };
  }
  async function reportUnsent() {
    if (!carried.length) return;
    if (channel) {
      channel.postMessage({ who: data.annotator, ask: carried.map((a) => a.seq) });
      await new Promise((resolve) => setTimeout(resolve, 300));
      const theirs = carried.filter((a) => elsewhere.has(a.seq));
      if (theirs.length) {
        carried = carried.filter((a) => !elsewhere.has(a.seq));
        saveUndo();
        Shortlist.toast(`${[...new Set(theirs.map((a) => a.id))].join(", ")}: still being sent by another tab ` +
          "open on the queue (this one is a copy of it): that tab says what becomes of them");
        if (!carried.length) return;
      }
    }
    const how = (a) => (a.act === "mark" ? (a.kind === "skip" ? "skip" : "not sure") : a.given);
    // per sample, in key order: what its last action meant it to have (a label, or a mark)
    const want = new Map();
    for (const a of [...carried].sort((x, y) => (x.seq || 0) - (y.seq || 0))) {
      if (!a || typeof a.id !== "string") continue;
      const w = want.get(a.id) || { id: a.id };
      if (a.act === "label") w.label = { to: a.given, a };
      else if (a.act === "mark") w.mark = { to: a.kind || "", a };
      else if (a.state === "refused" || a.state === "agreed") continue;  // its undo changes nothing
      else if (a.given !== undefined) { if (a.given !== (a.label || "")) w.label = { to: a.label || "", a, undo: true }; }
      else w.mark = { to: a.mark || "", a, undo: true };
      want.set(a.id, w);
    }
    // Who holds each label now: POST /api/labels/now (a read, ListSamples of the ids: the current label and
    // who gave it; a sample deleted since is left out), 1000 ids a request (the app's bound on an id list).
    // The marks: this page of the queue as the app has it now.
    const ids = [...want.values()].filter((w) => w.label).map((w) => w.id);
    const marked = [...want.values()].some((w) => w.mark);
    async function look() {
      const holder = new Map(), marks = new Map();
      for (let i = 0; i < ids.length; i += 1000) {
        const part = ids.slice(i, i + 1000);
        const res = await Shortlist.patiently(() => Shortlist.api("POST", "/api/labels/now", { ids: part }));
        for (const [id, h] of Object.entries(res.labels || {})) holder.set(id, { label: h.label || "", by: h.by || "" });
      }
      if (marked) {
        const res = await Shortlist.patiently(() => Shortlist.api("GET", `/api/queue?page=${data.page}`));
        if (res.created === data.created) for (const it of res.items) marks.set(it.id, it.mark || "");
      }
      return { holder, marks, key: JSON.stringify([[...holder], [...marks]]) };
    }
    // A request the page before sent may still be on its way to the agent (the browser drops the answer, not
    // the request): looked at again each second until two looks agree (up to 8 s), so that such a request,
    // landing just after this page opened, is counted as what it did.
    let seen;
    try {
      seen = await look();
      for (let i = 0; i < 8; i++) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        const again = await look();
        if (again.key === seen.key) break;
        seen = again;
      }
    } catch (e) {
      if (e.status === 401) return;  // kept: said on the queue page after the sign-in
      seen = { holder: new Map(), marks: new Map(), key: "" };
    }
    const { holder, marks } = seen;
    await refresh();  // the tiles as the agent has them now (the page was drawn before those requests landed)
    const lost = [], kept = [], theirs = [], unknown = [];
    let again = false;  // a label or mark lost (not only an undo): to be given again
    for (const w of want.values()) {
      const tile = tiles.find((t) => t.dataset.id === w.id);
      const name = tile ? shortId(tile) : w.id;
      if (w.label) {
        const { to, a } = w.label, h = holder.get(w.id);
        const now = h && h.label ? `; it has "${h.label}" by ${h.by} now` : "";
        if (!w.label.undo) {
          if (h && h.label === to && h.by === data.annotator) {
            kept.push(name);
            if (tile) undoStack.push({ tile, label: a.label, mark: a.mark, given: to, state: "saved", seq: a.seq });
          } else if (h && h.label === to) {
            // by "": an agent older than this app does not say who gave a label (Sample.annotator): not taken
            // for this person's, so Backspace leaves it as it is
            theirs.push(`${name} already had "${to}" from ${h.by || "someone (the agent is older than this app and does not say who)"}`);
            if (tile) undoStack.push({ tile, label: a.label, mark: a.mark, given: to, state: "agreed", by: h.by, seq: a.seq });
          } else { lost.push(`${name} (${to}${now})`); again = true; }
        } else if (h && h.label === to) {
          kept.push(name);
        } else if (h && h.label === a.given && h.by === data.annotator) {
          lost.push(`your undo on ${name} (it still has your "${a.given}"${tile ? ": Backspace takes it back" : ""})`);
          if (tile) undoStack.push({ tile, label: a.label, mark: a.mark, given: a.given, state: "saved", seq: a.seq });
        } else lost.push(`your undo on ${name}${h ? ` (it has "${h.label || "no label"}"${h.by ? ` by ${h.by}` : ""} now)` : ""}`);
      }
      if (w.mark) {
        const { to, a } = w.mark;
        if (!marks.has(w.id)) {
          // not on this page of the queue now (another page, or a queue replaced since): not looked at
          unknown.push(`${name} (${w.mark.undo ? "undo of " : ""}${how(a)})`);
        } else if (marks.get(w.id) === to) {
          kept.push(name);
          if (tile && !w.mark.undo) undoStack.push({ tile, label: a.label, mark: a.mark, kind: to, state: "saved", seq: a.seq });
        } else if (w.mark.undo) lost.push(`your undo on ${name} (${how(a)})`);
        else { lost.push(`${name} (${how(a)})`); again = true; }
      }
    }
    // in key order among the history kept (Backspace takes back the last key that was saved)
    undoStack.sort((x, y) => (x.seq || 0) - (y.seq || 0));
    carried = [];
    saveUndo();
    const parts = [];
    if (lost.length) parts.push(`not saved before the page was left: ${lost.join(", ")}${again ? " — label or mark it again" : ""}`);
    if (theirs.length) parts.push(`${theirs.join(", ")} (left as it is)`);
    if (kept.length) parts.push(`saved before the page was left: ${kept.join(", ")}`);
    if (unknown.length) parts.push(`not known whether saved before the page was left: ${unknown.join(", ")}: ` +
      "look at them on their page of the queue");
    const said = parts.join("; ");
    announce(said);
    Shortlist.toast(said, lost.length > 0, true);
  }
  // #grid[data-reported]: the report is done (or there was nothing to report), for the browser tests
  reportUnsent().finally(() => { if (grid) grid.dataset.reported = "1"; });
  if (othersUnsent.length) {
    const said = [];
    for (const k of othersUnsent) {
      const who = k.slice(UNSENT_PREFIX.length);
      let list = [];
      try { list = JSON.parse(sessionStorage.getItem(k) || "[]"); } catch (e) { list = []; }
      keep(k, null);
      const what = (Array.isArray(list) ? list : []).map((a) => (a.act === "label" ? `${a.id} (${a.given})`
        : a.act === "mark" ? `${a.id} (${a.kind === "skip" ? "skip" : "not sure"})` : `an undo on ${a.id}`));
      if (what.length) said.push(`${who}'s ${what.join(", ")} not saved in this tab before ${who}'s sign-in ended`);
    }
    if (said.length) Shortlist.toast(`${said.join("; ")}: ${othersUnsent.length > 1 ? "they" : "that person"} ` +
      "should give them again", true);
  }
  // Leaving with something not answered yet (the agent away: "… waiting"): the browser asks first, since what
  // is not answered then is not sent again (the next queue page says what was not saved). Not asked when the
  // app sends the browser to the sign-in page (the sign-in ended): that page says what was not saved.
  window.addEventListener("beforeunload", (ev) => {
    if (Shortlist.signingIn() || Shortlist.signingOut() || !tiles.some((t) => t._busy > 0)) return;
    ev.preventDefault();
    ev.returnValue = "";  // chromium before 119 asks only with returnValue set
  });
  Shortlist.returnTo(`/queue?page=${data.page}`);
})();

