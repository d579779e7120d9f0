// Review priors page: fetches /api/priors pages, accepts / corrects through /api/priors/labels. It polls
// /api/progress/head every refreshMs and, once samples were embedded, another model is served or labels
// changed (other than this page's own) since the priors shown, offers "New priors: ... — Recompute".
"use strict";
(() => {
  const cfg = JSON.parse(document.getElementById("priors-data").textContent);  // no inline script: the CSP
  const $ = (id) => document.getElementById(id);
  const grid = $("grid"), form = $("filters");
  const q = new URLSearchParams(location.search);
  const state = {
    method: q.get("method") || $("method").value, label: q.get("label") || "",
    min: Number(q.get("min") || 0), max: Number(q.get("max") || 100), sort: q.get("sort") || "desc",
    page: Number(q.get("page") || 1), data: null,
    // where the next load starts instead of `page`: after this id ("Next": the samples that followed the last
    // one shown, though those accepted left the list), or at this offset into the list ("Previous")
    after: null, offset: null,
  };
  // Saves run one after another: an Accept clicked while another is saving waits its turn (its tile shows
  // "pending" at once), it is never dropped.
  let saving = Promise.resolve();
  let lastBulk = null;  // {ids -> label} the last "Accept all" stored: what its undo takes back
  let inFlight = 0;  // saves and undos under way: the head is not compared meanwhile (their events not counted yet)
  let ownEvents = 0;  // label events this page caused since the grid was drawn (saved + taken back)
  $("method").value = state.method; $("label").value = state.label;
  $("min").value = state.min; $("max").value = state.max; $("sort").value = state.sort;

  function pct(p) { return `${Math.round(p * 100)}%`; }
  function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
  function confClass(p) { return p >= 0.8 ? "hi" : p >= 0.5 ? "mid" : "lo"; }

  function syncUrl() {
    const p = new URLSearchParams({ method: state.method, page: state.page });
    if (state.label) p.set("label", state.label);
    if (state.min > 0) p.set("min", state.min);
    if (state.max < 100) p.set("max", state.max);
    if (state.sort !== "desc") p.set("sort", state.sort);
    history.replaceState(null, "", `/priors?${p}`);
    document.querySelectorAll("#method-summary [data-method]").forEach((el) => { el.hidden = el.dataset.method !== state.method; });
  }

  async function load(refresh = false) {
    lastBulk = null; showUndoBulk();  // another grid: the last "Accept all" is no longer undone from here
    syncUrl();
    const p = new URLSearchParams({ method: state.method, label: state.label, min: state.min / 100,
      max: state.max / 100, sort: state.sort, page: state.page, size: cfg.pageSize });
    if (state.after !== null) p.set("after", state.after);
    else if (state.offset !== null) p.set("offset", state.offset);
    state.after = null; state.offset = null;
    if (refresh) p.set("refresh", "true");
    grid.setAttribute("aria-busy", "true");
    if (!state.data) grid.innerHTML = '<p class="muted">Computing the priors…</p>';
    try {
      const d = await Shortlist.api("GET", `/api/priors?${p}`);
      state.data = d; state.page = d.page; ownEvents = 0;
      render(d); notice(null);
    } catch (e) {
      grid.innerHTML = `<p class="error">${esc(e.message)}</p>`;
      $("priors-status").textContent = e.message;
      $("pager").hidden = true; $("bulkbar").hidden = true;
    } finally {
      grid.removeAttribute("aria-busy");
    }
  }

  function render(d) {
    syncUrl();
    $("stat-shown").textContent = d.total.toLocaleString();
    // the agent's counts now (the pool's), as the accepts below keep them
    setCounts(d.labeled_now, d.unlabelled);
    const when = new Date(d.computed_at * 1000).toLocaleTimeString();
    $("priors-meta").textContent = `${d.method} priors at model ${d.model_version || "–"}, computed ${when} from ${d.labeled_at.toLocaleString()} labels; grouped by prior class, ${state.sort === "desc" ? "most" : "least"} confident first.`;
    const cal = d.calibration || {};  // PriorLabel.calibration: a warning while confidences rest on few labels
    $("calibration").hidden = !cal.warning;
    $("calibration").textContent = cal.warning || "";
    const since = d.events_since;  // labels given, changed or taken back since (Status.label_events)
    $("stale").hidden = since <= 0;
    $("stale").textContent = `${since.toLocaleString()} label change(s) (labels given or taken back) since these priors were computed. Recompute to propagate them.`;
    // class tabs with counts in the confidence range
    const tabs = [["", Object.values(d.counts).reduce((a, b) => a + b, 0)], ...Object.entries(d.counts)];
    const tabFocused = $("class-tabs").contains(document.activeElement);  // kept on the active tab when redrawn
    $("class-tabs").innerHTML = tabs.map(([c, n]) =>
      `<button role="tab" class="tab${c === state.label ? " active" : ""}" data-label="${esc(c)}" aria-selected="${c === state.label}" aria-controls="grid" tabindex="${c === state.label ? 0 : -1}">${c ? esc(c) : "all"} <span class="count">${n.toLocaleString()}</span></button>`).join("");
    if (tabFocused) { const t = $("class-tabs").querySelector(".tab.active"); if (t) t.focus(); }
    if (!d.items.length) {
      grid.innerHTML = `<p class="muted">No unlabelled sample has a prior in this class and confidence range.</p>`;
    } else {
      let html = "", last = null;
      d.items.forEach((it, k) => {
        if (it.label !== last) {
          html += `<div class="group-head"><span class="chip">${esc(it.label)}</span> <span class="muted small" data-label="${esc(it.label)}">${(d.counts[it.label] || 0).toLocaleString()} in range</span></div>`;
          last = it.label;
        }
        const options = cfg.classes.map((c) => `<option value="${esc(c)}">${esc(c)}</option>`).join("");
        html += `<figure class="tile prior" data-id="${esc(it.id)}" data-label="${esc(it.label)}" data-index="${k}">
          <div class="thumb"><img loading="lazy" alt="${esc(it.id)}" src="${esc(Shortlist.imageUrl("thumb", it.id))}"></div>
          <figcaption class="stack0">
            <div class="line"><span class="sid" title="${esc(it.id)}">${esc(it.id)}</span>
              <span class="conf ${confClass(it.confidence)}" title="confidence of ${esc(it.label)}">${pct(it.confidence)}</span></div>
            <div class="bar"><span style="width:${pct(it.confidence)}" class="${confClass(it.confidence)}"></span></div>
            <div class="line muted small">${it.second ? `next: ${esc(it.second)} ${pct(it.second_p)}` : "&nbsp;"}</div>
            ${cfg.canLabel ? `<div class="actions">
              <button class="accept" data-act="accept" title="label it ${esc(it.label)}" aria-label="accept ${esc(it.label)} for ${esc(it.id)}">&#10003; ${esc(it.label)}</button>
              <select data-act="correct" aria-label="correct the class of ${esc(it.id)}"><option value="">correct…</option>${options}</select>
              <button class="save" data-act="save" disabled aria-label="save the corrected class of ${esc(it.id)}" title="label it with the class chosen">Save</button>
            </div>` : ""}
            <div class="done-note" hidden></div>
          </figcaption>
        </figure>`;
      });
      grid.innerHTML = html;
    }
    $("pager").hidden = d.offset <= 0 && !hasNext(d);
    $("prev-page").disabled = d.offset <= 0;
    $("next-page").disabled = !hasNext(d);
    $("bulkbar").hidden = !d.items.length;
    rangeLine(d);
    // the summary a screen reader hears (#priors-status, a polite live region; the grid is not one)
    const cls = state.label ? `class ${state.label}` : "all classes";
    $("priors-status").textContent = d.items.length
      ? `page ${d.page} of ${d.pages}, ${d.items.length} image${d.items.length === 1 ? "" : "s"}, ${cls}`
      : `no image with a prior in this range, ${cls}`;
  }

  // "N labelled" and "N unlabelled": the agent's counts (GET /api/priors, and the reply of each accept); a
  // count it could not give (null) leaves the number shown as it is.
  function setCounts(labelled, unlabelled) {
    if (typeof labelled === "number") $("stat-labelled").textContent = labelled.toLocaleString();
    if (typeof unlabelled === "number") $("stat-unlabelled").textContent = unlabelled.toLocaleString();
  }
  // The pager's range line and page count follow "N match" (they stayed as loaded: "1–48 of 273, page 1 of 6"
  // beside "225 match" after an Accept all); the tiles done here stay in the grid until the next page.
  function rangeLine(d) {
    const pages = Math.max(d.page, Math.ceil(d.total / d.size) || 1);
    $("page-label").textContent = `page ${d.page} of ${pages}`;
    $("page-info").textContent = d.items.length ? `${d.offset + 1}–${d.offset + d.items.length} of ${d.total.toLocaleString()}` : "none";
  }
  // The grid lists unlabelled samples with a prior in range: a tile labelled here (or by someone else meanwhile)
  // leaves that set, an undo puts it back. "N match", the class tabs' counts and the group heads' "in range" follow
  // (they stayed as loaded until a reload, while "unlabelled" and "labelled" moved). by: -1 or +1 per tile.
  function recount(tiles, by) {
    const d = state.data;
    if (!d || !tiles.length) return;
    for (const t of tiles) {
      d.counts[t.dataset.label] = Math.max(0, (d.counts[t.dataset.label] || 0) + by);
      d.total = Math.max(0, d.total + by);
    }
    const all = Object.values(d.counts).reduce((a, b) => a + b, 0);
    $("stat-shown").textContent = d.total.toLocaleString();
    $("class-tabs").querySelectorAll(".tab").forEach((b) => {
      b.querySelector(".count").textContent = (b.dataset.label ? d.counts[b.dataset.label] || 0 : all).toLocaleString();
    });
    grid.querySelectorAll(".group-head [data-label]").forEach((el) => {
      el.textContent = `${(d.counts[el.dataset.label] || 0).toLocaleString()} in range`;
    });
    rangeLine(d);
  }

  // The keyboard's focus on a control of a tile being saved (its Accept or Save, about to be disabled) moves
  // on first, to the next open tile's Accept (else to the tile itself): a disabled button drops the focus to
  // the page's body, where a screen reader loses its place and the page-wide keys A and ← → would act.
  function focusOn(tiles) {
    const a = document.activeElement;
    if (!a || !tiles.some((t) => t.contains(a))) return;
    const all = [...grid.querySelectorAll(".tile")];
    const from = all.indexOf(tiles[tiles.length - 1]);
    const open = (t) => !tiles.includes(t) && !t.classList.contains("done") && !t.classList.contains("pending");
    const next = [...all.slice(from + 1), ...all.slice(0, Math.max(0, from))].find(open);
    const accept = next && next.querySelector("button[data-act=accept]:not(:disabled)");
    if (accept) { accept.focus(); return; }
    const tile = tiles[tiles.length - 1];
    tile.tabIndex = -1;
    tile.focus();
  }
  function submit(labels, tiles, bulk = false) {
    focusOn(tiles);
    tiles.forEach((t) => {
      t.classList.add("pending");
      t.querySelectorAll(".actions button, .actions select").forEach((el) => { el.disabled = true; });
    });
    inFlight += 1;
    const run = saving.then(() => save(labels, tiles, bulk)).finally(() => { inFlight -= 1; });
    saving = run.catch(() => {});
    return run;
  }
  async function save(labels, tiles, bulk) {
    try {
      const r = await Shortlist.api("POST", "/api/priors/labels", { method: state.method, labels });
      ownEvents += r.accepted;
      // the agent's counts after these labels (a sample someone had already labelled so, agreed, is not one
      // more labelled: adding r.accepted said 177 where the agent had 157); without them, what this page knows
      if (typeof r.labeled_now === "number") setCounts(r.labeled_now, r.unlabelled);
      else {
        const fresh = Math.max(0, r.accepted - (r.agreed_count || 0));
        for (const [id, by] of [["stat-labelled", fresh], ["stat-unlabelled", -fresh]]) {
          const el = $(id);
          const was = parseInt(el.textContent.replace(/[^0-9]/g, ""), 10);
          if (!Number.isNaN(was)) el.textContent = Math.max(0, was + by).toLocaleString();
        }
      }
      const refused = new Map(r.rejected.map((x) => [x.id, x]));
      // agreed: the sample already had this label from someone else (another annotator accepting the same prior
      // meanwhile): stored, but the undo leaves it, so it never takes back their label (as the Queue does)
      const agreed = new Map((r.agreed || []).map((x) => [x.id, x]));
      // more agreements than listed (the agent lists the first ones only): which of the other labels stored are
      // someone else's too cannot be told, so an undo of this "Accept all" could take theirs back: none offered
      const unlisted = Math.max(0, (r.agreed_count || 0) - agreed.size);
      // more refusals than listed (the agent lists the first ones only): which of the other samples were stored
      // cannot be told, so their tiles say so (and stay open) instead of showing them accepted
      const unlistedRefused = Math.max(0, (r.rejected_count || 0) - r.rejected.length);
      tiles.forEach((t, k) => {
        t.classList.remove("pending");
        const note = t.querySelector(".done-note");
        const no = refused.get(t.dataset.id);
        if (no && no.changed) {  // labelled by someone else since the priors were computed: their label stays
          t.classList.add("done", "changed");
          note.hidden = false;
          note.textContent = `${no.reason}: left as it is`;
          t.querySelectorAll(".actions button, .actions select").forEach((el) => { el.disabled = true; });
        } else if (no) {
          t.classList.add("failed"); note.hidden = false; note.textContent = no.reason;
          t.querySelectorAll(".actions button, .actions select").forEach((el) => { el.disabled = false; });
        } else if (unlistedRefused) {
          t.classList.add("failed"); note.hidden = false;
          note.textContent = "saved, or among the refusals the agent did not list: Recompute shows which are still open";
          t.querySelectorAll(".actions button, .actions select").forEach((el) => { el.disabled = false; });
        } else {
          const accepted = labels[k].label === t.dataset.label;
          t.classList.add("done", accepted ? "accepted" : "corrected");
          note.hidden = false;
          note.textContent = accepted ? `✓ accepted: ${labels[k].label}` : `✎ labelled ${labels[k].label}`;
          const same = agreed.get(t.dataset.id);
          if (same) {
            t.classList.add("agreed");
            note.textContent = `= already labelled ${same.label} by ${same.by || "someone"}`;
          }
          const twin = (r.twin_conflicts || []).find((x) => x.id === t.dataset.id);
          if (twin) {  // stored all the same (last write wins per id): say that its exact copy disagrees
            note.textContent += ` — its identical copy ${twin.twin_id} is labelled ${twin.twin_label}`;
          }
          t.querySelectorAll(".actions button, .actions select").forEach((el) => { el.disabled = true; });
        }
      });
      recount(tiles.filter((t) => t.classList.contains("done")), -1);  // stored, or labelled meanwhile
      const changed = r.rejected.filter((x) => x.changed);
      const by = [...new Set(changed.map((x) => x.by).filter((b) => b))];
      const failed = Math.max(r.rejected.length, r.rejected_count || 0) - changed.length;
      // why: the listed refusals' reasons (the first two distinct ones), so a partly refused page says what to fix
      const why = [...new Set(r.rejected.filter((x) => !x.changed).map((x) => x.reason))].slice(0, 2).join("; ");
      Shortlist.toast(`${r.accepted} label(s) saved as ${r.annotator}` +
        (r.accepted_priors ? ` · ${r.accepted_priors} accepted prior(s)` : "") + (r.corrected ? ` · ${r.corrected} corrected` : "") +
        (changed.length ? ` · ${changed.length} labelled meanwhile${by.length ? " by " + by.join(", ") : ""}: left as it is` : "") +
        (agreed.size ? ` · ${agreed.size} already labelled so by ${[...new Set([...agreed.values()].map((x) => x.by || "someone"))].join(", ")}` +
          (bulk && !unlisted ? ": undo leaves them" : "") : "") +
        (unlisted ? ` · ${unlisted} more already labelled so by someone else, not listed by the agent` +
          (bulk ? ": no undo for this Accept all (it cannot tell your labels from theirs)" : "") : "") +
        (failed ? ` · ${failed} refused${why ? ": " + why : ""}` : "") +
        (unlistedRefused ? ` (${unlistedRefused} not listed by the agent: Recompute shows which samples are still open)` : ""),
        r.rejected.length > 0 || unlisted > 0 || unlistedRefused > 0);
      if (bulk) {
        const refusedIds = new Set(r.rejected.map((x) => x.id));
        lastBulk = unlisted || unlistedRefused ? null :
          new Map(labels.filter((x) => !refusedIds.has(x.id) && !agreed.has(x.id)).map((x) => [x.id, x.label]));
        showUndoBulk();
      }
    } catch (e) {
      tiles.forEach((t) => {
        t.classList.remove("pending");
        t.querySelectorAll(".actions button, .actions select").forEach((el) => { el.disabled = false; });
      });
      Shortlist.toast(e.message, true);
    }
  }
  function showUndoBulk() {
    const b = $("undo-accept-page");
    if (!b) return;
    b.hidden = !(lastBulk && lastBulk.size);
    if (lastBulk) b.textContent = `Undo accept all (${lastBulk.size})`;
  }
  // Undo of the last "Accept all": takes back exactly the labels it stored, each only while the sample still
  // has that label (if_current: a label someone changed since stays, and the toast says how many).
  async function undoBulk() {
    const bulk = lastBulk;
    if (!bulk || !bulk.size) { Shortlist.toast("nothing to undo"); return; }
    lastBulk = null; showUndoBulk();
    const ids = [...bulk.keys()];
    inFlight += 1;
    await saving;
    try {
      const r = await Shortlist.api("POST", "/api/labels/retract", { ids, if_current: Object.fromEntries(bulk) });
      ownEvents += r.accepted;
      const kept = new Set(r.rejected.map((x) => x.id));
      const back = [];  // unlabelled again: the counts move back
      grid.querySelectorAll(".tile.done.accepted").forEach((t) => {
        if (!bulk.has(t.dataset.id) || kept.has(t.dataset.id)) return;
        t.classList.remove("done", "accepted");
        t.querySelector(".done-note").hidden = true;
        t.querySelectorAll(".actions button, .actions select").forEach((el) => { el.disabled = false; });
        back.push(t);
      });
      recount(back, +1);
      for (const [id, by] of [["stat-labelled", -r.accepted], ["stat-unlabelled", r.accepted]]) {
        const el = $(id);
        const was = parseInt(el.textContent.replace(/[^0-9]/g, ""), 10);
        if (!Number.isNaN(was)) el.textContent = Math.max(0, was + by).toLocaleString();
      }
      Shortlist.toast(`undo: ${r.accepted} accepted prior(s) taken back` +
        (kept.size ? ` · ${kept.size} changed since: left as they are` : ""), kept.size > 0);
    } catch (e) {
      lastBulk = bulk; showUndoBulk();
      Shortlist.toast(e.message, true);
    } finally {
      inFlight -= 1;
    }
  }

  grid.addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-act=accept]");
    if (!btn) return;
    const tile = btn.closest(".tile");
    submit([{ id: tile.dataset.id, label: tile.dataset.label }], [tile]);
  });
  // A correction is stored only when Save is pressed: choosing in the box stores nothing (a closed box's arrow
  // keys change its value and fire "change" in Chrome: a look through the classes must not save the first).
  grid.addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-act=save]");
    if (!btn) return;
    const tile = btn.closest(".tile");
    const sel = tile.querySelector("select[data-act=correct]");
    if (!sel.value) return;
    submit([{ id: tile.dataset.id, label: sel.value }], [tile]);
  });
  grid.addEventListener("change", (ev) => {
    const sel = ev.target.closest("select[data-act=correct]");
    if (!sel) return;
    sel.closest(".tile").querySelector("button[data-act=save]").disabled = !sel.value;
  });
  // "Accept all on this page" asks first, with how many and how confident the least confident one is (and the
  // audit's measured accuracy of the method when there is one); "Undo accept all" takes them back.
  function acceptPage() {
    const tiles = [...grid.querySelectorAll(".tile:not(.done):not(.pending)")];
    if (!tiles.length) return;
    const byId = new Map((state.data ? state.data.items : []).map((it) => [it.id, it]));
    const confs = tiles.map((t) => (byId.get(t.dataset.id) || {}).confidence).filter((c) => c !== undefined);
    const lowest = confs.length ? Math.min(...confs) : null;
    const a = state.data && state.data.audit;
    const audit = a ? ` The audit measured ${state.method}'s accuracy at ${pct(a.accuracy)} (${pct(a.low)}–${pct(a.high)}, ` +
      `${a.total} audit labels).` : " The audit has not measured this method's accuracy yet.";
    if (!window.confirm(`Accept the prior of ${tiles.length} sample(s) as your labels?` +
      (lowest !== null ? ` The lowest confidence among them is ${pct(lowest)}.` : "") + audit)) return;
    submit(tiles.map((t) => ({ id: t.dataset.id, label: t.dataset.label })), tiles, true);
  }
  if ($("accept-page")) $("accept-page").addEventListener("click", acceptPage);
  if ($("undo-accept-page")) $("undo-accept-page").addEventListener("click", undoBulk);
  // The class tabs: one stop in the Tab order (the active tab); ← → Home End move between them, Enter or
  // Space shows one.
  $("class-tabs").addEventListener("keydown", (ev) => {
    const tabs = [...$("class-tabs").querySelectorAll(".tab")];
    const i = tabs.indexOf(ev.target.closest(".tab"));
    if (i < 0) return;
    const j = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[ev.key];
    if (j === undefined) return;
    ev.preventDefault();
    const to = tabs[(j + tabs.length) % tabs.length];
    tabs.forEach((t) => { t.tabIndex = t === to ? 0 : -1; });
    to.focus();
  });
  $("class-tabs").addEventListener("click", (ev) => {
    const tab = ev.target.closest(".tab");
    if (!tab) return;
    state.label = tab.dataset.label; $("label").value = state.label; state.page = 1; load();
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const min = Number($("min").value), max = Number($("max").value);
    // a range that is not one: said by #range-error (role=alert), tied to the fields that are wrong
    const badMin = !(min >= 0 && min <= 100) || (min > max), badMax = !(max >= 0 && max <= 100) || (min > max);
    for (const [id, bad] of [["min", badMin], ["max", badMax]]) {
      if (bad) { $(id).setAttribute("aria-invalid", "true"); $(id).setAttribute("aria-describedby", "range-error"); }
      else { $(id).removeAttribute("aria-invalid"); $(id).removeAttribute("aria-describedby"); }
    }
    $("range-error").hidden = !(badMin || badMax);
    if (badMin || badMax) {
      $("range-error").textContent = "confidence: 0 ≤ from ≤ to ≤ 100";
      return;
    }
    $("range-error").textContent = "";
    Object.assign(state, { method: $("method").value, label: $("label").value, min, max, sort: $("sort").value, page: 1 });
    state.data = null; load();
  });
  // A method is loaded once chosen: picked with the pointer, or with the keyboard once committed (Enter, or the
  // focus leaving the box). A closed box's arrow keys change its value and fire "change" in Chrome: a look
  // through the methods must not load each one (as the correction box, which waits for Save).
  let methodKeyed = false;
  const methodSel = $("method");
  methodSel.addEventListener("pointerdown", () => { methodKeyed = false; });
  methodSel.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") {
      ev.preventDefault();
      methodKeyed = false;
      if (methodSel.value !== state.method) form.requestSubmit();
    } else if (ev.key !== "Tab" && ev.key !== "Shift") methodKeyed = true;
  });
  methodSel.addEventListener("change", () => { if (!methodKeyed) form.requestSubmit(); });
  methodSel.addEventListener("blur", () => {
    if (methodKeyed && methodSel.value !== state.method) form.requestSubmit();
    methodKeyed = false;
  });
  // Recompute (also the notice's button): after the saves under way, so no tile being saved is redrawn
  async function recompute() {
    $("refresh").disabled = true;
    try { await saving; } finally { $("refresh").disabled = false; }
    state.method = $("method").value; state.data = null; load(true);
  }
  $("refresh").addEventListener("click", recompute);
  $("priors-notice-recompute").addEventListener("click", recompute);

  // What changed since the priors shown (the grid's /api/priors answer) by the agent's head now: "" if nothing.
  function changes(h, d) {
    const parts = [];
    const fresh = h.embedded - d.embedded_at;
    if (fresh > 0) parts.push(`${fresh.toLocaleString()} new sample(s)`);
    if (h.model_version && h.model_version !== d.model_version) parts.push(`model ${h.model_version}`);
    const events = h.label_events - d.label_events_now - ownEvents;
    if (events > 0) parts.push(`labels changed (${events.toLocaleString()})`);
    return parts.join(" / ");
  }
  function notice(text) {
    $("priors-notice").hidden = !text;
    $("priors-notice-text").textContent = text ? `New priors: ${text} — ` : "";
  }
  async function watch() {
    try {
      const h = await Shortlist.api("GET", "/api/progress/head");
      if (state.data && !inFlight) notice(changes(h, state.data));
    } catch (e) { /* the agent may be restarting: try again */ }
    setTimeout(watch, cfg.refreshMs);
  }
  setTimeout(watch, cfg.refreshMs);
  // Pages are read from where the shown one is: "Next" after its last sample, "Previous" one page size before
  // its first (samples accepted here left the list, so page numbers would skip the ones that moved up).
  function hasNext(d) { return d.offset + d.items.length < d.total; }
  function nextPage() {
    const d = state.data;
    if (!d || !d.items.length || !hasNext(d)) return;
    state.after = d.items[d.items.length - 1].id; state.page = d.page + 1; load();
  }
  function prevPage() {
    const d = state.data;
    if (!d || d.offset <= 0) return;
    state.offset = Math.max(0, d.offset - d.size); state.page = Math.max(1, d.page - 1); load();
  }
  $("prev-page").addEventListener("click", prevPage);
  $("next-page").addEventListener("click", nextPage);
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    // A: anywhere but a field that takes typed text or a choice (a button or link activates by Enter or Space,
    // not by A; after an Accept the focus is on the next tile's Accept, where A did nothing)
    if ((ev.key === "a" || ev.key === "A") && cfg.canLabel) {
      if (ev.target.closest("input, select, textarea, [contenteditable]")) return;
      ev.preventDefault(); acceptPage(); return;
    }
    // ← →: not on a control (a link, a button, a class tab, a form field) but a tile's own buttons (Accept,
    // Save): the arrows are the other controls' keys (a tab's, a field's)
    const onTile = ev.target.closest(".tile.prior button");
    if (!onTile && ev.target.closest("input, select, textarea, button, a, [role=tab]")) return;
    if (ev.key === "ArrowRight") nextPage();
    else if (ev.key === "ArrowLeft") prevPage();
  });
  load();
})();
