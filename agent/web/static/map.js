// Map page: draws /api/map's points on a canvas (no library), colours them, shows the hovered sample's
// thumbnail, and turns a lasso / box selection into the queue (POST /api/queue, source "map").
// An open page watches the map's header every cfg.refreshMs and redraws (keeping the view and the selection)
// once samples arrive or another model version is served, so a lasso can pick the new samples.
"use strict";
(() => {
  const cfg = JSON.parse(document.getElementById("map-data").textContent);  // no inline script: the CSP
  const $ = (id) => document.getElementById(id);
  const canvas = $("map"), wrap = $("map-wrap"), ctx = canvas.getContext("2d");
  // Tableau 20: distinct, print-safe class colours.
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728",
    "#ff9896", "#9467bd", "#c5b0d5"];
  // Unlabelled points (no prior, not in the queue: the grey group) are a small "x" of two strokes, a mark no
  // class uses (every class shape is a closed, filled or outlined, outline), so they are told from class 0's
  // squares by shape, not by colour or lightness alone. A mid grey (the filled squares were lighter, #c3c8d1):
  // thin strokes need more ink to be seen.
  const NONE_INK = "#8e95a2";
  const NONE_SHAPE = "x";
  // Each class has a shape as well as a colour (class k: SHAPES[k % 7]), so a class is told apart without
  // telling colours apart (red from green, say). Vertices on the unit circle's scale (y down); none = a circle.
  // The legend draws the same shape (an SVG) beside the class's name.
  const SHAPES = [
    { name: "square", pts: [[-0.9, -0.9], [0.9, -0.9], [0.9, 0.9], [-0.9, 0.9]] },
    { name: "circle", pts: null },
    { name: "triangle", pts: [[0, -1.15], [1.05, 0.85], [-1.05, 0.85]] },
    { name: "diamond", pts: [[0, -1.2], [1.2, 0], [0, 1.2], [-1.2, 0]] },
    { name: "cross", pts: [[-0.35, -1.1], [0.35, -1.1], [0.35, -0.35], [1.1, -0.35], [1.1, 0.35], [0.35, 0.35],
      [0.35, 1.1], [-0.35, 1.1], [-0.35, 0.35], [-1.1, 0.35], [-1.1, -0.35], [-0.35, -0.35]] },
    { name: "triangle-down", pts: [[0, 1.15], [1.05, -0.85], [-1.05, -0.85]] },
    { name: "star", pts: Array.from({ length: 10 }, (_, j) => {
      const a = -Math.PI / 2 + (j * Math.PI) / 5, m = j % 2 ? 0.5 : 1.25;
      return [m * Math.cos(a), m * Math.sin(a)];
    }) },
  ];
  const shapeOf = (k) => SHAPES[((k % SHAPES.length) + SHAPES.length) % SHAPES.length];
  // Adds class k's shape around (x, y), of radius r (px), to the current path.
  function shapePath(k, x, y, r) {
    const s = shapeOf(k);
    if (!s.pts) { ctx.moveTo(x + r, y); ctx.arc(x, y, r, 0, 2 * Math.PI); return; }
    s.pts.forEach(([px, py], j) => (j ? ctx.lineTo : ctx.moveTo).call(ctx, x + px * r, y + py * r));
    ctx.closePath();
  }
  // Adds the unlabelled points' "x" around (x, y), half-width r (px), to the current path (to be stroked).
  function nonePath(x, y, r) {
    ctx.moveTo(x - r, y - r); ctx.lineTo(x + r, y + r); ctx.moveTo(x - r, y + r); ctx.lineTo(x + r, y - r);
  }
  // The legend's swatch for class k (-1: no class, the unlabelled points' "x"), in colour ``fill``.
  function swatch(k, fill) {
    const svg = (shape, body) => `<svg class="swatch" data-shape="${shape}" viewBox="-1.3 -1.3 2.6 2.6" width="13" height="13" aria-hidden="true" focusable="false" fill="${fill}">${body}</svg>`;
    if (k < 0) return svg(NONE_SHAPE, `<path class="open" d="M-0.9,-0.9L0.9,0.9M-0.9,0.9L0.9,-0.9" fill="none" stroke="${fill}" stroke-width="0.45" stroke-linecap="round"/>`);
    const s = shapeOf(k);
    return svg(s.name, s.pts ? `<polygon points="${s.pts.map((p) => p.map((v) => v.toFixed(3)).join(",")).join(" ")}"/>`
      : `<circle r="1"/>`);
  }
  const pts = { ids: [], x: [], y: [], label: [], prior: null, inQueue: null, selected: null, n: 0 };
  let classes = [], header = null, tool = "lasso", colour = "label";
  let view = { sx: 1, sy: 1, tx: 0, ty: 0 };  // screen = data * s + t
  let drag = null, hoverIdx = -1, buckets = null, pollTimer = null, drawnVersion = "";
  let queueCreated = cfg.queueCreated;  // the queue this page knows: its replacement is conditional on it
  const dpr = () => window.devicePixelRatio || 1;
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const colourOf = (k) => PALETTE[k % PALETTE.length];

  function resize() {
    const r = wrap.getBoundingClientRect();
    canvas.width = Math.max(1, Math.floor(r.width * dpr()));
    canvas.height = Math.max(1, Math.floor(r.height * dpr()));
    canvas.style.width = `${r.width}px`; canvas.style.height = `${r.height}px`;
    draw();
  }

  function fit() {
    if (!pts.n) return;
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < pts.n; i++) {
      x0 = Math.min(x0, pts.x[i]); x1 = Math.max(x1, pts.x[i]); y0 = Math.min(y0, pts.y[i]); y1 = Math.max(y1, pts.y[i]);
    }
    const w = canvas.width / dpr(), h = canvas.height / dpr(), pad = 24;
    const s = Math.min((w - 2 * pad) / Math.max(x1 - x0, 1e-9), (h - 2 * pad) / Math.max(y1 - y0, 1e-9));
    view = { sx: s, sy: -s, tx: w / 2 - s * (x0 + x1) / 2, ty: h / 2 + s * (y0 + y1) / 2 };
    draw();
  }
  const sx = (i) => pts.x[i] * view.sx + view.tx;
  const sy = (i) => pts.y[i] * view.sy + view.ty;

  // What colour group a point is in for the current mode: -1 = background grey.
  function group(i) {
    if (colour === "label") return pts.label[i];
    if (colour === "prior") return pts.label[i] >= 0 ? pts.label[i] : (pts.prior ? pts.prior[i] : -1);
    return pts.inQueue && pts.inQueue[i] ? 0 : -1;
  }

  function draw() {
    const w = canvas.width / dpr(), h = canvas.height / dpr();
    ctx.setTransform(dpr(), 0, 0, dpr(), 0, 0);
    ctx.fillStyle = "#fbfbfc"; ctx.fillRect(0, 0, w, h);
    const r = pts.n > 20000 ? 1.6 : pts.n > 3000 ? 2.2 : 3.2;
    buckets = new Map();
    const cell = 12;
    const layers = [[], []];
    for (let i = 0; i < pts.n; i++) {
      const x = sx(i), y = sy(i);
      if (x < -5 || y < -5 || x > w + 5 || y > h + 5) continue;
      layers[group(i) >= 0 ? 1 : 0].push(i);
      const key = `${Math.floor(x / cell)},${Math.floor(y / cell)}`;
      let b = buckets.get(key);
      if (!b) { b = []; buckets.set(key, b); }
      b.push(i);
    }
    // With a selection, the other points fade, so the selection reads at any density.
    const sel = pts.selected && pts.selected.some((v) => v) ? pts.selected : null;
    const fade = (i, a) => (sel && !sel[i] ? a * 0.22 : a);
    // the grey group: one stroked path per alpha (tens of thousands of points), each point an "x"
    ctx.strokeStyle = NONE_INK; ctx.lineWidth = r > 2 ? 1.2 : 0.9; ctx.lineCap = "round";
    for (const faded of sel ? [true, false] : [false]) {
      ctx.globalAlpha = faded ? 0.8 * 0.22 : 0.8;
      ctx.beginPath();
      for (const i of layers[0]) if (!sel || !sel[i] === faded) nonePath(sx(i), sy(i), r * 0.9);
      ctx.stroke();
    }
    ctx.lineCap = "butt";
    for (const i of layers[1]) {
      const g = group(i);
      // each class in its shape (the queue: one group, squares); labelled samples filled; priors outlined
      const paint = colour === "queue" ? "#f28e2b" : colourOf(g), k = colour === "queue" ? 0 : g;
      ctx.beginPath(); shapePath(k, sx(i), sy(i), r * 1.3);
      if (colour === "prior" && pts.label[i] < 0) {
        ctx.globalAlpha = fade(i, 0.8); ctx.strokeStyle = paint; ctx.lineWidth = 1.4; ctx.stroke();
      } else {
        ctx.globalAlpha = fade(i, 0.9); ctx.fillStyle = paint; ctx.fill();
      }
    }
    ctx.globalAlpha = 1;
    if (sel && pts.n <= 3000) {  // few points: a dark ring around each selected one too
      ctx.strokeStyle = "#161b26"; ctx.lineWidth = 1.2;
      // in the point's own shape (its class's; the queue's a square), a square around an unlabelled "x"
      for (let i = 0; i < pts.n; i++) {
        if (!sel[i]) continue;
        const g = group(i);
        ctx.beginPath(); shapePath(colour === "queue" || g < 0 ? 0 : g, sx(i), sy(i), r * 1.3 + 2.5); ctx.stroke();
      }
    }
    if (hoverIdx >= 0) {
      ctx.strokeStyle = "#2f6fed"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(sx(hoverIdx), sy(hoverIdx), r + 5, 0, 2 * Math.PI); ctx.stroke();
    }
    if (drag && drag.kind === "lasso" && drag.path.length > 1) {
      ctx.strokeStyle = "#2f6fed"; ctx.fillStyle = "rgba(47,111,237,.08)"; ctx.lineWidth = 1.5; ctx.setLineDash([5, 4]);
      ctx.beginPath(); ctx.moveTo(drag.path[0][0], drag.path[0][1]);
      for (const [x, y] of drag.path) ctx.lineTo(x, y);
      ctx.closePath(); ctx.fill(); ctx.stroke(); ctx.setLineDash([]);
    }
    if (drag && drag.kind === "box") {
      const [x0, y0] = drag.start, [x1, y1] = drag.end;
      ctx.strokeStyle = "#2f6fed"; ctx.fillStyle = "rgba(47,111,237,.08)"; ctx.setLineDash([5, 4]);
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0); ctx.strokeRect(x0, y0, x1 - x0, y1 - y0); ctx.setLineDash([]);
    }
  }

  function nearest(x, y) {
    if (!buckets) return -1;
    const cell = 12, cx = Math.floor(x / cell), cy = Math.floor(y / cell);
    let best = -1, bd = 10 * 10;
    for (let dx = -1; dx <= 1; dx++) for (let dy = -1; dy <= 1; dy++) {
      for (const i of buckets.get(`${cx + dx},${cy + dy}`) || []) {
        const d = (sx(i) - x) ** 2 + (sy(i) - y) ** 2;
        if (d < bd) { bd = d; best = i; }
      }
    }
    return best;
  }

  function showHover(i, x, y) {
    const card = $("hover");
    if (i < 0) { card.hidden = true; return; }
    const id = pts.ids[i];
    const img = $("hover-img");
    const src = Shortlist.imageUrl("thumb", id, "size=160");
    if (img.getAttribute("src") !== src) img.setAttribute("src", src);
    const lab = pts.label[i] >= 0 ? classes[pts.label[i]] : "";
    const pri = pts.prior && pts.label[i] < 0 && pts.prior[i] >= 0 ? `${classes[pts.prior[i]]} ${Math.round(pts.priorConf[i] * 100)}%` : "";
    $("hover-text").innerHTML = `<code>${esc(id)}</code><br>${lab ? `label <b>${esc(lab)}</b>` : "unlabelled"}${pri ? `<br>prior ${esc(pri)}` : ""}${pts.inQueue && pts.inQueue[i] ? "<br>in the queue" : ""}`;
    card.hidden = false;
    const w = wrap.clientWidth, h = wrap.clientHeight;
    card.style.left = `${Math.min(x + 16, w - 190)}px`;
    card.style.top = `${Math.min(y + 16, h - 230)}px`;
  }

  function inPolygon(x, y, poly) {  // ray casting (even-odd rule)
    let inside = false;
    for (let a = 0, b = poly.length - 1; a < poly.length; b = a++) {
      const [xa, ya] = poly[a], [xb, yb] = poly[b];
      if ((ya > y) !== (yb > y) && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) inside = !inside;
    }
    return inside;
  }

  function select(test, add) {
    if (!pts.selected || !add) pts.selected = new Uint8Array(pts.n);
    const onlyUnlabelled = $("unlabelled-only").checked;
    for (let i = 0; i < pts.n; i++) {
      if (onlyUnlabelled && pts.label[i] >= 0) continue;
      if (test(sx(i), sy(i))) pts.selected[i] = 1;
    }
    updateSelection();
  }

  function selectedIds() {
    const out = [];
    if (pts.selected) for (let i = 0; i < pts.n; i++) if (pts.selected[i]) out.push(pts.ids[i]);
    return out;
  }

  function updateSelection() {
    const n = selectedIds().length;
    $("stat-selected").textContent = n.toLocaleString();
    $("sel-text").textContent = n ? `${n.toLocaleString()} sample(s) selected.` : "Draw a lasso (or a box) around points to select them.";
    $("to-queue").disabled = !n || !cfg.canLabel;
    $("clear-sel").disabled = !n;
    draw();
  }

  // Pointer Events: the same code for a mouse, a pen and a finger (the canvas has touch-action: none, so a
  // finger draws instead of scrolling the page). Two fingers pinch to zoom and move the map (no selection).
  const pointers = new Map();  // pointerId -> [x, y] on the canvas
  let pinch = null;  // {dist, mid} of the two fingers at the last move
  function at(ev) { const r = canvas.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; }
  function twoFingers() {
    const [a, b] = [...pointers.values()];
    return { dist: Math.hypot(a[0] - b[0], a[1] - b[1]) || 1, mid: [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2] };
  }
  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.pointerType === "mouse" && ev.button !== 0 && ev.button !== 1) return;
    const [x, y] = at(ev);
    pointers.set(ev.pointerId, [x, y]);
    try { canvas.setPointerCapture(ev.pointerId); } catch (e) { /* not capturable: window moves still come */ }
    if (pointers.size === 2) { drag = null; pinch = twoFingers(); draw(); return; }  // a pinch cancels the drawing
    if (pointers.size > 2) return;
    ev.preventDefault();
    if (tool === "pan" || ev.button === 1) drag = { kind: "pan", last: [x, y] };
    else if (tool === "box") drag = { kind: "box", start: [x, y], end: [x, y], add: ev.shiftKey };
    else drag = { kind: "lasso", path: [[x, y]], add: ev.shiftKey };
    $("hover").hidden = true;
  });
  window.addEventListener("pointermove", (ev) => {
    const [x, y] = at(ev);
    if (pointers.has(ev.pointerId)) pointers.set(ev.pointerId, [x, y]);
    if (pinch && pointers.size === 2) {
      const now = twoFingers(), f = now.dist / pinch.dist;
      view.tx += now.mid[0] - pinch.mid[0]; view.ty += now.mid[1] - pinch.mid[1];
      view.tx = now.mid[0] - (now.mid[0] - view.tx) * f; view.ty = now.mid[1] - (now.mid[1] - view.ty) * f;
      view.sx *= f; view.sy *= f;
      pinch = now;
      draw();
      return;
    }
    const r = canvas.getBoundingClientRect();
    if (!drag) {
      if (ev.pointerType !== "mouse" || x < 0 || y < 0 || x > r.width || y > r.height) return;
      const i = nearest(x, y);
      if (i !== hoverIdx) { hoverIdx = i; draw(); }
      showHover(i, x, y);
      return;
    }
    if (!pointers.has(ev.pointerId)) return;
    if (drag.kind === "pan") {
      view.tx += x - drag.last[0]; view.ty += y - drag.last[1]; drag.last = [x, y];
    } else if (drag.kind === "box") drag.end = [x, y];
    else drag.path.push([x, y]);
    draw();
  });
  function pointerEnd(ev) {
    if (!pointers.delete(ev.pointerId)) return;
    if (pinch) { if (pointers.size < 2) pinch = null; return; }  // the fingers lift one by one: nothing drawn
    if (!drag) return;
    const d = drag; drag = null;
    if (ev.type === "pointercancel") { draw(); return; }
    if (d.kind === "lasso" && d.path.length > 2) select((x, y) => inPolygon(x, y, d.path), d.add);
    else if (d.kind === "box") {
      const [x0, x1] = [Math.min(d.start[0], d.end[0]), Math.max(d.start[0], d.end[0])];
      const [y0, y1] = [Math.min(d.start[1], d.end[1]), Math.max(d.start[1], d.end[1])];
      if (x1 - x0 > 2 && y1 - y0 > 2) select((x, y) => x >= x0 && x <= x1 && y >= y0 && y <= y1, d.add);
    }
    draw();
  }
  window.addEventListener("pointerup", pointerEnd);
  window.addEventListener("pointercancel", pointerEnd);
  canvas.addEventListener("mouseleave", () => { if (!drag) { hoverIdx = -1; $("hover").hidden = true; draw(); } });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const f = Math.exp(-ev.deltaY * 0.0015), x = ev.offsetX, y = ev.offsetY;
    view.tx = x - (x - view.tx) * f; view.ty = y - (y - view.ty) * f; view.sx *= f; view.sy *= f;
    draw();
  }, { passive: false });
  canvas.addEventListener("dblclick", (ev) => {
    const i = nearest(ev.offsetX, ev.offsetY);
    if (i >= 0) window.open(Shortlist.imageUrl("image", pts.ids[i]), "_blank");
  });
  document.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => {
    tool = b.dataset.tool;
    document.querySelectorAll("[data-tool]").forEach((o) => {
      o.classList.toggle("active", o === b);
      o.setAttribute("aria-pressed", String(o === b));
    });
    canvas.style.cursor = tool === "pan" ? "grab" : "crosshair";
  }));
  $("reset-view").addEventListener("click", fit);
  $("clear-sel").addEventListener("click", () => { pts.selected = null; updateSelection(); });
  $("to-queue").addEventListener("click", async () => {
    const ids = selectedIds();
    if (!ids.length) return;
    $("to-queue").disabled = true;
    try {
      // the queue is the team's: replacing its open samples and marks is asked first, as on the Queue page
      // (the page's own count, when the app cannot count: the queue's samples it last coloured, if any)
      if (!await Shortlist.confirmReplace(() => (pts.inQueue ? pts.inQueue.filter((q, i) => q && pts.label[i] < 0).length : 0),
        "Send to queue anyway?")) return;
      // if_created: the queue this page knows (at its load, or as last coloured / sent); replaced since by
      // someone else, the answer is a 409 that says by what, and the page now knows that queue: a second click
      // replaces it knowingly.
      const r = await Shortlist.api("POST", "/api/queue", { ids, source: "map", if_created: queueCreated });
      Shortlist.toast(`${r.total.toLocaleString()} sample(s) are the queue now`);
      $("queue-link").hidden = false;
      await loadQueue();
    } catch (e) {
      Shortlist.toast(e.message, true);
      if (e.status === 409 && !e.elsewhere) {  // (not a page signed in as someone else since: app.js says so)
        $("queue-link").hidden = false;
        try { await loadQueue(); } catch (e2) { /* the next click asks again */ }
      }
    } finally {
      $("to-queue").disabled = false;
    }
  });
  $("colour").addEventListener("change", async () => {
    colour = $("colour").value;
    $("method-wrap").hidden = colour !== "prior";
    if (colour === "prior") await loadPriors();
    if (colour === "queue") await loadQueue();
    legend(); draw();
  });
  $("method").addEventListener("change", async () => { await loadPriors(); legend(); draw(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input, select, textarea")) return;
    if (ev.key === "0") fit();
    else if (ev.key === "Escape") { pts.selected = null; updateSelection(); }
  });

  function legend() {
    const counts = new Map();
    for (let i = 0; i < pts.n; i++) { const g = group(i); counts.set(g, (counts.get(g) || 0) + 1); }
    let html = "";
    if (colour === "queue") {
      html = `<li>${swatch(0, "#f28e2b")}in the queue <span class="count">${(counts.get(0) || 0).toLocaleString()}</span></li>`;
      html += `<li data-none>${swatch(-1, NONE_INK)}not in the queue <span class="count">${(counts.get(-1) || 0).toLocaleString()}</span></li>`;
    } else {
      classes.forEach((c, k) => { html += `<li data-class="${esc(c)}">${swatch(k, colourOf(k))}${esc(c)} <span class="count">${(counts.get(k) || 0).toLocaleString()}</span></li>`; });
      const rest = colour === "label" ? "unlabelled" : "no prior";
      html += `<li data-none>${swatch(-1, NONE_INK)}${rest} <span class="count">${(counts.get(-1) || 0).toLocaleString()}</span></li>`;
      if (colour === "prior") html += `<li class="muted small">filled: labels · outlined: priors</li>`;
    }
    $("legend").innerHTML = html;
  }

  async function loadPriors() {
    try {
      const d = await Shortlist.api("GET", `/api/priors/all?method=${encodeURIComponent($("method").value)}`);
      const pos = new Map(pts.ids.map((id, i) => [id, i]));
      const idx = new Map(classes.map((c, k) => [c, k]));
      pts.prior = new Int32Array(pts.n).fill(-1); pts.priorConf = new Float32Array(pts.n);
      d.ids.forEach((id, k) => {
        const i = pos.get(id);
        if (i !== undefined) { pts.prior[i] = idx.has(d.classes[d.label[k]]) ? idx.get(d.classes[d.label[k]]) : -1; pts.priorConf[i] = d.confidence[k]; }
      });
    } catch (e) {
      pts.prior = null;
      Shortlist.toast(`priors: ${e.message}`, true);
    }
  }

  async function loadQueue() {
    const d = await Shortlist.api("GET", "/api/map/queue");
    queueCreated = d.created;
    const inq = new Set(d.ids);
    pts.inQueue = new Uint8Array(pts.n);
    for (let i = 0; i < pts.n; i++) if (inq.has(pts.ids[i])) pts.inQueue[i] = 1;
    legend(); draw();
  }

  // n: the points received (the header's total still counts samples deleted since the map was made)
  function facts(h, n = h.total) {
    const stale = h.shown_version && h.shown_version !== h.model_version;
    const rows = [["model", h.model_version || "none"]];
    if (stale) rows.push(["map shown", `of ${h.shown_version} (${h.model_version}'s: ${h.state}${h.state === "computing" ? ", " + Math.round(h.progress * 100) + "%" : ""})`]);
    rows.push(["method", h.method || "–"], ["points", n.toLocaleString()], ["fitted on", h.fitted.toLocaleString()]);
    if (!stale) rows.push(["not placed yet", h.pending.toLocaleString()]);
    if (h.recomputing) rows.push(["refit", `running, ${Math.round(h.progress * 100)}%`]);
    $("map-facts").innerHTML = rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  }

  function notice(h) {
    // The agent sends the previous version's map while the serving version's map computes.
    const el = $("map-notice");
    const stale = h.shown_version && h.shown_version !== h.model_version;
    if (stale) {
      const pct = Math.round(h.progress * 100);
      el.innerHTML = h.state === "failed"
        ? `The map of model ${esc(h.model_version)} could not be computed (${esc(h.message)}); showing the map of ${esc(h.shown_version)}.`
        : `A newer map is being computed for model ${esc(h.model_version)} (${pct}%); showing the map of ${esc(h.shown_version)} until it is ready (samples embedded since are not on it).`;
    }
    el.hidden = !stale;
    return stale;
  }

  async function poll() {
    // While an older map is shown: look at the header only (one point), reload everything once it changes.
    clearTimeout(pollTimer);
    try {
      const h = await Shortlist.api("GET", "/api/map?offset=0&limit=1");
      if (h.shown_version === header.shown_version && h.state === header.state) {
        notice(h); facts(h);
        pollTimer = setTimeout(poll, 1500);
        return;
      }
    } catch (e) { /* the next full load says what is wrong */ }
    load();
  }

  // What makes the page redraw: anything of the header that changes the points drawn.
  const headKey = (h) => [h.model_version, h.shown_version, h.state, h.total, h.fitted, h.pending, h.recomputing].join("|");

  async function watch() {
    // The map is drawn and up to date: look at the header alone (one point) every refreshMs.
    clearTimeout(pollTimer);
    if (!header) { load(); return; }  // the first load failed: try it again
    try {
      const h = await Shortlist.api("GET", "/api/map?offset=0&limit=1");
      if (headKey(h) !== headKey(header)) {
        if (drag) { pollTimer = setTimeout(watch, 500); return; }  // not under the user's lasso
        load();
        return;
      }
    } catch (e) { /* the agent may be restarting: try again */ }
    pollTimer = setTimeout(watch, cfg.refreshMs);
  }

  async function load() {
    clearTimeout(pollTimer);
    const st = $("map-state");
    try {
      let offset = 0, h = null;
      const ids = [], x = [], y = [], label = [];
      for (;;) {
        const d = await Shortlist.api("GET", `/api/map?offset=${offset}&limit=${cfg.pageSize}`);
        h = h || d;
        classes = d.classes;
        ids.push(...d.ids); x.push(...d.x); y.push(...d.y); label.push(...d.label);
        // `next`, not the ids received: the stored map still counts deleted samples (left out of `ids`) until
        // it is made again, so offset + received would ask for points already drawn
        if (!(d.next > offset) || d.next >= d.total) break;
        offset = d.next;
      }
      header = h;
      facts(h, ids.length);
      $("stat-points").textContent = ids.length.toLocaleString();  // the live points (total counts deleted ones)
      st.classList.remove("error");
      const stale = notice(h) && ids.length > 0;
      if (stale) st.hidden = true;
      else if (h.state === "none") { st.textContent = "No model is served yet: the map appears once the agent serves one."; st.hidden = false; }
      else if (h.state === "computing") { st.innerHTML = `Computing the map for ${esc(h.model_version)}… <b>${Math.round(h.progress * 100)}%</b><div class="bar"><span style="width:${Math.round(h.progress * 100)}%"></span></div>`; st.hidden = false; }
      else if (h.state === "failed") { st.textContent = h.message; st.hidden = false; st.classList.add("error"); }
      else st.hidden = ids.length > 0;
      if (h.state === "ready" && !ids.length) { st.textContent = "The pool is empty."; st.hidden = false; }
      $("map-meta").textContent = h.state === "ready" || stale
        ? `${h.method} of ${ids.length.toLocaleString()} samples at model ${h.shown_version || h.model_version}` + (h.recomputing ? ` · refitting in the background (${Math.round(h.progress * 100)}%)` : "")
        : "The pool's embeddings in 2-D: nearby points look alike to the model.";
      const first = pts.n === 0;
      if (!first) {  // a redraw: say what changed
        const parts = [];
        if (ids.length > pts.n) parts.push(`${(ids.length - pts.n).toLocaleString()} new sample(s)`);
        if ((h.shown_version || h.model_version) !== drawnVersion) parts.push(`model ${h.shown_version || h.model_version}`);
        if (parts.length) Shortlist.toast(`Map updated: ${parts.join(", ")}`);
      }
      drawnVersion = h.shown_version || h.model_version;
      const keep = new Set(selectedIds());
      Object.assign(pts, { ids, x, y, label, n: ids.length, prior: null, inQueue: null, selected: null });
      if (keep.size) { pts.selected = new Uint8Array(pts.n); ids.forEach((id, i) => { if (keep.has(id)) pts.selected[i] = 1; }); }
      if (colour === "prior") await loadPriors();
      await loadQueue();
      if (first) fit();
      legend(); updateSelection();
      canvas.dataset.ready = (h.state === "ready" || stale) && ids.length ? "1" : "0";
      canvas.dataset.shown = h.shown_version || "";
      if (stale) pollTimer = setTimeout(poll, 1500);
      else if (h.state === "computing" || h.state === "none" || h.pending > 0 || h.recomputing) pollTimer = setTimeout(load, h.state === "ready" ? 5000 : 1500);
      else pollTimer = setTimeout(watch, cfg.refreshMs);
    } catch (e) {
      st.textContent = e.message; st.hidden = false;
      pollTimer = setTimeout(watch, cfg.refreshMs);
    }
  }

  // For tests and scripts: select by data-space polygon is the same as a user's lasso.
  window.ShortlistMap = { points: () => pts, view: () => view, header: () => header, selectedIds,
    shapeOf: (k) => shapeOf(k).name };
  window.addEventListener("resize", resize);
  resize();
  load();
})();
