"""Route tests of the Map page (agent/web/map.py): the map's state and pages of points from GetMap, and
the queue's ids for colouring."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from tests.agent.web.conftest import LABELLED, N_IMAGES, SHAPES, WebAgent, new_version_held


def ready_map(c: TestClient, total: int = N_IMAGES, timeout: float = 60.0, version: str = "v0001") -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        d: dict[str, Any] = c.get("/api/map").json()
        if d["state"] == "ready" and d["total"] == total and d["model_version"] == version:
            return d
        assert time.monotonic() < end, d
        time.sleep(0.2)


def test_map_page_and_points(web_agent: WebAgent) -> None:
    c = web_agent.client()
    page = c.get("/map")
    assert page.status_code == 200 and '<canvas id="map"' in page.text and "/static/map.js" in page.text
    d = ready_map(c)
    assert d["model_version"] == "v0001" and d["fitted"] == N_IMAGES and d["pending"] == 0
    assert sorted(d["ids"]) == [f"img{i:03d}.png" for i in range(N_IMAGES)]
    assert len(d["x"]) == len(d["y"]) == len(d["label"]) == N_IMAGES
    labelled = {i: d["classes"][k] for i, k in zip(d["ids"], d["label"], strict=True) if k >= 0}
    assert labelled == {f"img{i:03d}.png": SHAPES[i % 3] for i in range(LABELLED) if i % 3 != 2}
    # pages: offset / limit
    parts = [c.get("/api/map", params={"offset": o, "limit": 10}).json() for o in (0, 10, 20, 30)]
    assert [i for p in parts for i in p["ids"]] == d["ids"] and [len(p["ids"]) for p in parts] == [10, 10, 10, 6]
    for params in ({"limit": 0}, {"limit": 10**6}, {"offset": -1}):
        r = c.get("/api/map", params=params)
        assert r.status_code == 400 and r.json()["error"] == "INVALID_ARGUMENT"


def test_queue_ids_for_colouring(web_agent: WebAgent) -> None:
    c = web_agent.client()
    assert c.get("/api/map/queue").json()["ids"] == []
    ids = ["img010.png", "img011.png"]
    assert c.post("/api/queue", json={"ids": ids, "source": "map"}).status_code == 200
    q = c.get("/api/map/queue").json()  # created: the lasso's "send to queue" sends it as if_created
    assert q == {"ids": ids, "source": "map", "created": c.get("/api/queue").json()["created"]} and q["created"] > 0


def test_the_old_map_is_served_while_the_new_versions_map_computes(web_agent: WebAgent) -> None:
    c = web_agent.client()
    old = ready_map(c)
    assert old["shown_version"] == "v0001"
    with new_version_held(web_agent) as gate:
        d = c.get("/api/map").json()
        assert (d["model_version"], d["state"], d["shown_version"], d["total"]) == ("v0002", "computing", "v0001", 36)
        assert (d["ids"], d["x"], d["y"]) == (old["ids"], old["x"], old["y"])
        gate.set()
        new = ready_map(c, version="v0002")
    assert new["shown_version"] == "v0002" and new["x"] != old["x"]


def test_pages_after_a_deletion_follow_next_and_give_each_point_once(web_agent: WebAgent) -> None:
    """After DeleteSamples the stored map still counts the deleted samples (``total``) and leaves their points
    out: pages read from each answer's ``next`` cover every live point exactly once (offset + the ids
    received would ask again for points already given)."""
    from shortlist.v1 import agent_pb2

    c = web_agent.client()
    ready_map(c)
    gone = ["img003.png", "img012.png"]
    assert web_agent.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=gone, annotator="lead",
                                                                       reason="test")).accepted == 2
    ids: list[str] = []
    offset, total = 0, N_IMAGES
    while offset < total:
        d = c.get("/api/map", params={"offset": offset, "limit": 10}).json()
        assert d["next"] == offset + 10
        ids += d["ids"]
        offset, total = d["next"], d["total"]
    assert total == N_IMAGES  # the stored map's places, until it is made again
    assert sorted(ids) == sorted(f"img{i:03d}.png" for i in range(N_IMAGES) if f"img{i:03d}.png" not in gone)
