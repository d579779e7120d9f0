// Progress page: local times for the table; a notice with a Reload button once the agent's counts change
// (the page is drawn by the server: it polls /api/progress/head every refreshMs); and the audit button (a
// Select with strategy "audit" that fills the Queue, then the Queue page to label it), which asks first when
// the queue it replaces still has open samples.
"use strict";
(() => {
  // the short date ("12/7/26, 8:25:10 PM"): the Annotators table fits its panel; the long one on hover
  for (const el of document.querySelectorAll(".time[data-t]")) {
    const t = Number(el.dataset.t);
    if (!(t > 0)) continue;
    const d = new Date(t * 1000);
    el.textContent = d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
    el.title = d.toLocaleString(undefined, { dateStyle: "full", timeStyle: "long" });
  }
  const cfg = JSON.parse(document.getElementById("progress-data").textContent);
  const drawn = cfg.head;

  function changes(h) {
    const parts = [];
    if (h.labelled !== drawn.labelled) parts.push(`${h.labelled.toLocaleString()} labelled (was ${drawn.labelled.toLocaleString()})`);
    if (h.samples !== drawn.samples) parts.push(`${h.samples.toLocaleString()} samples (was ${drawn.samples.toLocaleString()})`);
    if (h.model_version !== drawn.model_version) parts.push(`model ${h.model_version} served`);
    else if (h.pending_model_version !== drawn.pending_model_version) parts.push(h.pending_model_version ? `re-embedding for ${h.pending_model_version}` : "re-embedding done");
    if (h.audit_drawn !== drawn.audit_drawn || h.audit_labelled !== drawn.audit_labelled) parts.push("the audit changed");
    return parts;
  }
  async function watch() {
    try {
      const parts = changes(await Shortlist.api("GET", "/api/progress/head"));
      if (parts.length) {
        document.getElementById("progress-notice-text").textContent = `Newer figures: ${parts.join(", ")}. `;
        document.getElementById("progress-notice").hidden = false;
      }
    } catch (e) { /* the agent may be restarting: try again */ }
    setTimeout(watch, cfg.refreshMs);
  }
  document.getElementById("progress-reload").addEventListener("click", () => window.location.reload());
  setTimeout(watch, cfg.refreshMs);

  const form = document.getElementById("audit-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const budget = Number(form.elements.budget.value);
    const button = document.getElementById("audit-button");
    button.disabled = true;
    try {
      const q = await Shortlist.api("GET", "/api/progress/queue");
      if (q.open > 0 && !window.confirm(`The queue still has ${q.open.toLocaleString()} of ${q.total.toLocaleString()} ` +
          `samples unlabelled (${q.strategy || q.source}). Drawing an audit sample replaces it for everyone. Replace it?`)) {
        button.disabled = false;
        return;
      }
      const seed = Math.floor(Math.random() * 2 ** 31);
      // if_created: the queue the confirmation was about; replaced since by someone else, it is a 409
      const r = await Shortlist.api("POST", "/api/queue/select", { strategy: "audit", budget, seed, if_created: q.created });
      Shortlist.toastNext(`${r.total} audit samples drawn: label them in the Queue`);  // said on the Queue page
      window.location.href = "/queue";
    } catch (e) {
      Shortlist.toast(e.message, true);  // 409: "the queue was replaced meanwhile by ...; look at it first"
      if (e.status === 409 && !e.elsewhere) document.getElementById("audit-replaced").hidden = false;
      button.disabled = false;
    }
  });
})();
