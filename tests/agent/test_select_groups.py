"""Select's per-group cap (SelectRequest.group_by / max_per_group): at most N picks share one value of a
metadata key (a camera-trap burst), for every strategy, applied once in agent/core.py's select path."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc
import pytest

from agent import client, core
from agent.strategies import STRATEGIES
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, Running, make_images, png, start

N = 60
LABELS = 12


def samples(event_of: dict[int, str | None]) -> list[agent_pb2.Sample]:
    """N PNG samples s0..s59 (the first LABELS labelled with their cluster's class); ``event_of[i]`` is the
    sample's "event" metadata (None: no such key)."""
    out = []
    for i, img in enumerate(make_images(N)):
        event = event_of.get(i)
        meta = {"camera": "c1"} if event is None else {"camera": "c1", "event": event}
        out.append(client.image_sample(f"s{i}", png(img), label=CLASSES[i % 3] if i < LABELS else "",
                                       metadata=meta))
    return out


def select(r: Running, budget: int, strategy: str, seed: int = 0, group_by: str = "", cap: int = 0,
           **where: str) -> agent_pb2.SelectReply:
    return r.stub.Select(agent_pb2.SelectRequest(budget=budget, strategy=strategy, seed=seed, where=where,
                                                 group_by=group_by, max_per_group=cap))


def events(reply: agent_pb2.SelectReply, event_of: dict[int, str | None]) -> list[str | None]:
    return [event_of.get(int(s.id[1:])) for s in reply.selected]


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_margin_that_picks_one_burst_is_capped_and_filled_from_other_groups(tmp_path: Path,
                                                                            registry: Path) -> None:
    # Margin's plain answer on these samples, found first on an agent without events ...
    plain = start(tmp_path / "plain", registry)
    try:
        client.ingest(plain.stub, samples({}), batch=32)
        picks = [int(s.id[1:]) for s in select(plain, 8, "margin").selected]
    finally:
        plain.stop()
    assert len(picks) == 8
    # ... then on the same samples where those 8 are one burst (the others in bursts of 3).
    event_of: dict[int, str | None] = {i: f"ev{i // 3}" for i in range(N)}
    event_of.update({i: "burst" for i in picks})
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, samples(event_of), batch=32)
        again = select(r, 8, "margin")
        assert events(again, event_of) == ["burst"] * 8  # the plain answer: all one group
        capped = select(r, 8, "margin", group_by="event", cap=2)
        got = events(capped, event_of)
        assert len(got) == 8  # the budget, filled from other groups
        assert max(Counter(got).values()) <= 2 and got.count("burst") == 2
        # The strategy's order is kept: its two best picks of the burst come first.
        assert [s.id for s in capped.selected[:2]] == [s.id for s in again.selected[:2]]
        assert int(capped.details[core.GROUP_ROUNDS]) >= 2 and int(capped.details[core.GROUP_SET_ASIDE]) >= 6
        assert core.GROUP_NOT_FILLED not in capped.details
        # Deterministic, and a repeat is the recorded selection from the cache (the key has the cap).
        repeat = select(r, 8, "margin", group_by="event", cap=2)
        assert [s.id for s in repeat.selected] == [s.id for s in capped.selected]
        assert repeat.selection_id == capped.selection_id
        other = select(r, 8, "margin", group_by="event", cap=3)
        assert other.selection_id != capped.selection_id and events(other, event_of).count("burst") == 3
        recorded = {sid: req for sid, req, _, _ in r.agent.state.selections()}
        assert recorded[capped.selection_id]["group_by"] == "event"
        assert recorded[capped.selection_id]["max_per_group"] == 2
        assert "group_by" not in recorded[again.selection_id]
    finally:
        r.stop()


@pytest.fixture
def bursts(tmp_path: Path, registry: Path):
    # 5 large groups (event = i % 5); samples 55..59 have no event key: each a group of its own.
    event_of: dict[int, str | None] = {i: f"ev{i % 5}" for i in range(55)}
    r = start(tmp_path / "data", registry)
    client.ingest(r.stub, samples(event_of), batch=32)
    yield r, event_of
    r.stop()


def test_every_strategy_honours_the_cap(bursts) -> None:
    r, event_of = bursts
    for name in sorted(set(STRATEGIES) - {"audit"}):
        a = select(r, 9, name, seed=3, group_by="event", cap=1)
        got = events(a, event_of)
        counted = Counter(e for e in got if e is not None)
        assert counted and max(counted.values()) <= 1, (name, got)
        # 5 events and 5 samples without the key: the budget of 9 can be filled (each unkeyed one alone).
        assert len(got) == 9, (name, got, dict(a.details))
        assert len({s.id for s in a.selected}) == 9 and not {s.id for s in a.selected} & {f"s{i}" for i in
                                                                                        range(LABELS)}
        b = select(r, 9, name, seed=3, group_by="event", cap=1)
        assert [s.id for s in b.selected] == [s.id for s in a.selected], f"{name} is not deterministic"
        # Within a where filter too: camera c1 holds all of them.
        c = select(r, 4, name, seed=3, group_by="event", cap=2, camera="c1")
        assert max(Counter(events(c, event_of)).values()) <= 2 and len(c.selected) == 4, name


def test_a_cap_the_groups_cannot_fill_says_so(bursts) -> None:
    r, _ = bursts
    short = select(r, 9, "margin", group_by="camera", cap=3)  # one camera: 3 at most
    assert len(short.selected) == 3
    assert short.details[core.GROUP_NOT_FILLED].startswith("3 of 9 picked with at most 3 per \"camera\": every "
                                                           "candidate left is in a group at its cap")


def test_the_round_bound_ends_a_capped_call(bursts, monkeypatch: pytest.MonkeyPatch) -> None:
    r, _ = bursts
    monkeypatch.setattr(core, "MAX_GROUP_ROUNDS", 1)
    one = select(r, 9, "entropy", seed=11, group_by="event", cap=1)  # a seed of its own: not from the cache
    assert one.details[core.GROUP_ROUNDS] == "1"
    assert len(one.selected) == 9 - int(one.details[core.GROUP_SET_ASIDE]) < 9  # entropy's top 9 repeat events
    assert one.details[core.GROUP_NOT_FILLED].endswith(
        "1 rounds ran (the bound) with 4 candidates still eligible; ask again with these picks labelled, or a "
        "larger max_per_group")


def test_a_capped_random_draw_is_not_a_uniform_draw(bursts) -> None:
    r, _ = bursts
    before = len(r.agent._draws)
    select(r, 5, "random", seed=9, group_by="event", cap=1)
    assert len(r.agent._draws) == before
    select(r, 5, "random", seed=9)
    assert len(r.agent._draws) == before + 1


def test_bad_caps_are_invalid_arguments(bursts) -> None:
    r, _ = bursts
    cases = [
        ({"max_per_group": 2}, "max_per_group 2 needs group_by"),
        ({"group_by": "event"}, "group_by \"event\" needs max_per_group >= 1"),
        ({"group_by": "event", "max_per_group": -1}, "max_per_group must be >= 1, or 0 for no cap (got -1)"),
        ({"group_by": "", "max_per_group": -3}, "max_per_group must be >= 1, or 0 for no cap (got -3)"),
        ({"group_by": "ev\nent", "max_per_group": 1}, "group_by key"),
    ]
    for fields, said in cases:
        code, msg = code_of(lambda f=fields: r.stub.Select(agent_pb2.SelectRequest(budget=3, strategy="random",
                                                                                   **f)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and said in msg, (fields, msg)
    code, msg = code_of(lambda: select(r, 3, "audit", group_by="event", cap=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "drop max_per_group" in msg


def test_each_round_is_admitted_like_a_select_of_its_own(bursts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Admission's accounting stays honest: a capped call's every strategy run takes a slot of its own, with
    the size and prior a plain Select of that strategy declares."""
    r, _ = bursts
    calls: list[tuple[str, float | None]] = []
    for lane in (r.agent.work, r.agent.light_work):
        real = lane.run

        def counted(token, fn, what="this request", kind=None, size=None, prior_cpu_s=None, real=real):
            calls.append((what, size))
            return real(token, fn, what, kind, size, prior_cpu_s)

        monkeypatch.setattr(lane, "run", counted)
    capped = select(r, 9, "coreset", seed=21, group_by="event", cap=1)
    rounds = int(capped.details[core.GROUP_ROUNDS])
    assert rounds >= 2 and len(calls) == rounds and {w for w, _ in calls} == {"Select \"coreset\""}
    plain = len(calls)
    select(r, 9, "coreset", seed=22)
    assert len(calls) == plain + 1 and calls[-1][1] == calls[0][1]  # the same declared size per run


def test_a_group_by_key_no_candidate_has_says_the_cap_changed_nothing(bursts) -> None:
    r, _ = bursts
    none = select(r, 5, "margin", seed=4, group_by="evnet", cap=1)
    assert len(none.selected) == 5 and none.details[core.GROUP_SET_ASIDE] == "0"
    assert none.details[core.GROUP_KEY_MISSING] == (
        "no candidate has the metadata key \"evnet\": each is a group of its own, so the cap changed nothing (keys "
        "must equal a sample's metadata key exactly; see ListSamples)")
    assert core.GROUP_KEY_MISSING not in select(r, 5, "margin", seed=4, group_by="event", cap=1).details
