"""Every text of the Queue, Review priors, Map and Progress pages meets WCAG AA contrast (4.5:1, or 3:1 for
large text: 24 px, or bold from 18.66 px), worked out from the computed colours in the browser: the saved
label's badge, the Accept buttons, the group chips and the Map's active tool included."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agent.web.conftest import WebAgent, open_queue
from tests.agent.web.test_pages_browser import label_triangles, wait_map_ready

pytestmark = pytest.mark.browser

# For each visible element with text of its own: its colour over the backgrounds behind it (alpha blended, on
# white), the WCAG relative luminance ratio, and the lowest ratio per kind of element that misses its need.
LOW_CONTRAST = r"""() => {
  const parse = (s) => { const m = s.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(",").map(parseFloat); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const lum = (c) => { const f = lin;
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const bgOf = (e) => { const layers = [];
    for (; e && e.nodeType === 1; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
    let base = [255, 255, 255];
    for (let i = layers.length - 1; i >= 0; i--) {
      const c = layers[i]; base = [0, 1, 2].map((k) => c[k] * c[3] + base[k] * (1 - c[3])); }
    return base; };
  const low = {};
  for (const e of document.querySelectorAll("body *")) {
    const cs = getComputedStyle(e);
    if (!e.getClientRects().length || cs.visibility === "hidden" || e.closest(".sr-only, [hidden]")) continue;
    const text = [...e.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent.trim()).join("");
    if (!text || e.closest("button:disabled")) continue;  // disabled controls are exempt
    const bg = bgOf(e), c = parse(cs.color), fg = [0, 1, 2].map((k) => c[k] * c[3] + bg[k] * (1 - c[3]));
    const a = lum(fg), b = lum(bg), ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(cs.fontSize), bold = parseInt(cs.fontWeight) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    const key = e.tagName.toLowerCase() + "." + [...e.classList].join(".");
    if (ratio < need && (!low[key] || low[key].ratio > ratio))
      low[key] = { ratio: Math.round(ratio * 100) / 100, text: text.slice(0, 30), color: cs.color, bg: String(bg) };
  }
  return low;
}"""


def test_every_text_meets_aa_contrast(live_web: WebAgent, page: Any) -> None:
    label_triangles(live_web, [2, 5])
    ids = open_queue(live_web, page, "ana", budget=12, replace=True)
    page.keyboard.press("1")  # a saved label: its green badge
    page.wait_for_selector(".tile[data-saved='1']")
    page.locator(".class-btn").first.hover()  # a class button's hover colours
    assert page.evaluate(LOW_CONTRAST) == {}, "queue"
    assert ids
    page.goto(f"{live_web.url}/priors?method=knn")
    page.wait_for_selector(".tile.prior button.accept")
    page.locator(".class-tabs .tab").nth(1).click()  # a selected class tab
    page.wait_for_selector(".class-tabs .tab.active")
    page.wait_for_selector(".tile.prior button.accept")
    assert page.evaluate(LOW_CONTRAST) == {}, "priors"
    page.goto(f"{live_web.url}/map")
    wait_map_ready(page)
    assert page.locator(".seg button.active").count() >= 1  # the active tool
    assert page.evaluate(LOW_CONTRAST) == {}, "map"
    page.goto(f"{live_web.url}/progress")
    page.wait_for_selector("#annotators")
    assert page.evaluate(LOW_CONTRAST) == {}, "progress"
