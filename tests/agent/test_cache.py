"""agent.cache.LruCache: the one bounded LRU of the agent and the web app (Select / PriorLabels answers, images,
the Label Studio backend's memories of annotations)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.cache import LruCache
from agent.web import labelstudio
from agent.web.config import LabelStudioConfig


def test_peek_and_in_leave_the_order_and_put_returns_what_it_pushed_out() -> None:
    c: LruCache[str] = LruCache(2)
    assert c.put("a", "A") == [] and c.put("b", "B") == []
    assert c.peek("a") == "A" and "a" in c and "z" not in c and c.hits == 0  # not made recent, not a hit
    assert c.put("c", "C") == [("a", "A")]  # "a", peeked, is still the oldest
    assert c.get("b") == "B" and c.hits == 1  # a get makes "b" recent
    assert c.put("d", "D") == [("c", "C")]
    assert c.pop("b") == "B" and c.pop("b") is None and len(c) == 1
    assert c.put("e", "E") == [] and len(c) == 2  # the popped entry's room is free again


def test_weights_bound_the_cache_too() -> None:
    c: LruCache[int] = LruCache(10, max_weight=5)
    c.put("a", 1, weight=3)
    assert c.put("b", 2, weight=3) == [("a", 1)]
    assert c.put("big", 3, weight=6) == [] and "big" not in c  # heavier than the whole cache: not kept


def test_the_label_studio_memories_are_bounded_by_their_last_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_GIVEN annotations remembered: the least recently given goes, and with it the sample's pointer to it
    (``_last``) unless a later annotation of the sample holds it; reads leave the order."""
    monkeypatch.setattr(labelstudio, "MAX_GIVEN", 2)
    monkeypatch.setattr(labelstudio, "MAX_STAMPS", 2)
    monkeypatch.setattr(labelstudio, "MAX_DELETED", 2)
    monkeypatch.setattr(labelstudio, "MAX_PROJECTS", 1)
    b = labelstudio.LabelStudioBackend(LabelStudioConfig())
    t: datetime | None = datetime(2026, 1, 1, tzinfo=UTC)
    given = [(("1", str(n)), labelstudio._Given(f"s{n}", "cat", "ls:1"), t) for n in range(3)]
    b._remember_given(given[:2])
    assert b._given.peek(("1", "0")) is not None  # a read: "0" stays the oldest
    b._remember_given(given[2:])
    assert ("1", "0") not in b._given and "s0" not in b._last and b._last["s2"] == ("1", "2")
    assert ("1", "0") not in b._stamps and b._older(("1", "1"), datetime(2025, 1, 1, tzinfo=UTC))
    b._remember("p1", "<View/>")
    b._remember("p2", "<View/>")
    assert b._schemas.peek("p1") is None and b._schemas.peek("p2") == "<View/>"
