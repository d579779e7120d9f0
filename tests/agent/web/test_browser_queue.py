"""The Queue page in a real browser: ask for samples, label with the keyboard (number keys, a new class,
skip, not sure, undo), and check the labels through gRPC."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agent.web.conftest import WebAgent, shot

pytestmark = pytest.mark.browser


def test_keyboard_labelling(live_web: WebAgent, page: Any) -> None:
    page.goto(live_web.url + "/queue")
    page.select_option("#strategy", "random")
    page.fill("input[name=budget]", "12")
    page.click("#ask-button")
    page.wait_for_selector(".tile")
    tiles = page.locator(".tile")
    assert tiles.count() == 12
    ids = [tiles.nth(i).get_attribute("data-id") for i in range(12)]
    page.wait_for_function("Array.from(document.querySelectorAll('.tile img'))"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    # 1 = circle, 2 = square on the first two tiles (focus moves on after each label)
    page.keyboard.press("1")
    page.keyboard.press("2")
    page.wait_for_selector(f'.tile[data-id="{ids[1]}"][data-saved="1"]')
    # skip the third, "not sure" on the fourth, then a new class on the fifth
    page.keyboard.press(" ")
    page.keyboard.press("?")
    page.keyboard.press("+")
    page.keyboard.type("hexagon")
    page.keyboard.press("Enter")
    page.wait_for_selector(f'.tile[data-id="{ids[4]}"][data-saved="1"]')
    # move back to the first tile with the arrows and relabel it 3 = triangle, then undo that
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    page.keyboard.press("3")
    page.wait_for_selector(f'.tile[data-id="{ids[0]}"][data-label="triangle"]')
    page.keyboard.press("Backspace")
    page.wait_for_selector(f'.tile[data-id="{ids[0]}"][data-label="circle"]')
    labels = live_web.labels()
    assert (labels[ids[0]], labels[ids[1]], labels[ids[4]]) == ("circle", "square", "hexagon")
    assert ids[2] not in labels and ids[3] not in labels
    assert page.locator(f'.tile[data-id="{ids[3]}"] .badge').inner_text() == "not sure"
    rec = live_web.agent.state.lookup(ids[0])
    assert rec is not None
    assert [h[0] for h in live_web.agent.state.label_history(rec.seq)] == ["circle", "triangle", "circle"]
    page.mouse.move(0, 0)
    shot(page, "app-queue")
