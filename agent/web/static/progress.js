// Progress page: local times for the table, and the audit button (a Select with strategy "audit" that
// fills the Queue, then the Queue page to label it).
"use strict";
(() => {
  for (const el of document.querySelectorAll(".time[data-t]")) {
    const t = Number(el.dataset.t);
    if (t > 0) el.textContent = new Date(t * 1000).toLocaleString();
  }
  const form = document.getElementById("audit-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const budget = Number(form.elements.budget.value);
    const button = document.getElementById("audit-button");
    button.disabled = true;
    try {
      const seed = Math.floor(Math.random() * 2 ** 31);
      const r = await Shortlist.api("POST", "/api/queue/select", { strategy: "audit", budget, seed });
      Shortlist.toast(`${r.total} audit samples drawn: label them in the Queue`);
      window.location.href = "/queue";
    } catch (e) {
      Shortlist.toast(e.message, true);
      button.disabled = false;
    }
  });
})();
