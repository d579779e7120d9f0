"""The real agent over gRPC on a loopback port: ingest, select, labels, priors, status, health,
reflection and every kind of bad input."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent import client
from agent.config import Limits
from agent.priors import PRIOR_METHODS
from agent.service import _PARTS, SERVICE_NAME, stop_server
from agent.strategies import LABEL_FREE, STRATEGIES
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, Running, make_images, make_samples, png, start


def status(r: Running) -> agent_pb2.Status:
    return r.stub.GetStatus(agent_pb2.GetStatusRequest())


def select(r: Running, budget: int, strategy: str = "random", seed: int = 0, **where: str) -> agent_pb2.SelectReply:
    return r.stub.Select(agent_pb2.SelectRequest(budget=budget, strategy=strategy, seed=seed, where=where))


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_ingest_stores_embeds_and_counts_duplicates(running: Running) -> None:
    samples = make_samples(40, labels=9)
    reply = client.ingest(running.stub, samples, batch=16)
    assert (reply.accepted, reply.duplicates, list(reply.rejected)) == (40, 0, [])
    st = status(running)
    assert (st.samples, st.labeled, st.embedded, st.model_version) == (40, 9, 40, "v0001")
    assert list(st.classes) == CLASSES  # adopted from the model's manifest
    assert set(STRATEGIES) == set(st.strategies) and set(PRIOR_METHODS) == set(st.prior_methods)
    again = client.ingest(running.stub, samples[:5] + make_samples(2, prefix="new"), batch=3)
    assert (again.accepted, again.duplicates) == (2, 5)
    listed = list(client.list_samples(running.stub, include_payload=True))
    assert [s.id for s in listed[:3]] == ["s0", "s1", "s2"] and len(listed) == 42
    assert listed[0].encoded_image == samples[0].encoded_image and listed[0].metadata["site"] == "a"
    assert listed[0].label == "cat" and listed[20].label == ""
    assert {s.id for s in client.list_samples(running.stub, labeled_only=True)} == {f"s{i}" for i in range(9)}


def test_tensor_payloads_embed_like_images(running: Running) -> None:
    img = make_images(1, hw=(8, 8))[0]
    chw = (img.astype(np.float32) / 255).transpose(2, 0, 1).copy()
    reply = client.ingest(running.stub, [client.image_sample("png", png(img)), client.tensor_sample("u8", img),
                                         client.tensor_sample("f32", chw)])
    assert reply.accepted == 3 and not reply.rejected
    view = running.agent.manager.current.index.view()  # type: ignore[union-attr]
    assert np.allclose(view.vecs[0], view.vecs[1], atol=1e-5) and np.allclose(view.vecs[0], view.vecs[2], atol=1e-3)
    listed = {s.id: s for s in client.list_samples(running.stub, include_payload=True)}
    assert listed["u8"].tensor.data == img.tobytes() and list(listed["f32"].tensor.shape) == [3, 8, 8]


def test_bad_samples_are_rejected_one_by_one(running: Running) -> None:
    img = make_images(1)[0]
    client.ingest(running.stub, make_samples(1))
    bad = [
        agent_pb2.Sample(id="", encoded_image=png(img)),
        agent_pb2.Sample(id="junk", encoded_image=b"not an image"),
        agent_pb2.Sample(id="nopayload"),
        agent_pb2.Sample(id="shape", tensor=agent_pb2.Tensor(dtype="uint8", shape=[4, 4], data=bytes(16))),
        agent_pb2.Sample(id="channels", tensor=agent_pb2.Tensor(dtype="uint8", shape=[4, 4, 2], data=bytes(32))),
        agent_pb2.Sample(id="dtype", tensor=agent_pb2.Tensor(dtype="int16", shape=[4, 4, 3], data=bytes(96))),
        agent_pb2.Sample(id="short", tensor=agent_pb2.Tensor(dtype="uint8", shape=[4, 4, 3], data=bytes(10))),
        client.image_sample("s0", png(255 - img)),  # same id, different payload
        client.image_sample("lbl", png(img), label="horse"),  # closed class list
        client.image_sample("ok", png(img)),
    ]
    reply = client.ingest(running.stub, bad)
    reasons = {r.id: r.reason for r in reply.rejected}
    assert reply.accepted == 1 and len(reply.rejected) == 9
    assert "empty id" in reasons[""] and "not a readable image" in reasons["junk"]
    assert "no payload" in reasons["nopayload"] and "3 positive dims" in reasons["shape"]
    assert "C = 1 or 3" in reasons["channels"] and "not supported" in reasons["dtype"]
    assert "needs 48" in reasons["short"] and "different payload" in reasons["s0"]
    assert "unknown label \"horse\"" in reasons["lbl"] and "cat, dog, frog" in reasons["lbl"]
    assert status(running).samples == 2  # nothing else changed
    labels = client.submit_labels(running.stub, [("ok", "dog"), ("nope", "dog"), ("ok", "horse"), ("", "cat")])
    assert labels.accepted == 1 and [r.id for r in labels.rejected] == ["nope", "ok", ""]


def test_oversized_message_is_resource_exhausted(tmp_path, registry) -> None:
    r = start(tmp_path / "data", registry, limits=Limits(max_message_bytes=200_000))
    try:
        big = client.image_sample("big", np.random.default_rng(0).bytes(300_000))
        code, msg = code_of(lambda: client.ingest(r.stub, [big]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in msg
        assert client.ingest(r.stub, make_samples(2)).accepted == 2  # still serving
    finally:
        r.stop()


def test_select_every_strategy(running: Running) -> None:
    client.ingest(running.stub, make_samples(60, labels=12), batch=32)
    labelled = {f"s{i}" for i in range(12)}
    for name in sorted(STRATEGIES):
        a = select(running, 7, name, seed=3)
        b = select(running, 7, name, seed=3)
        ids = [s.id for s in a.selected]
        assert a.model_version == "v0001" and a.strategy == name and a.selection_id
        assert 0 < len(ids) <= 7 and len(set(ids)) == len(ids), name
        assert not set(ids) & labelled, name
        assert ids == [s.id for s in b.selected], f"{name} is not deterministic for a seed"
        assert a.selection_id == b.selection_id, name  # the repeat is the recorded selection (from the cache)
        if name == "audit":  # draws from the whole pool: a where filter is refused (tests/agent/test_audit.py)
            continue
        only_a = [s.id for s in select(running, 5, name, seed=1, site="a").selected]
        assert all(int(i[1:]) % 2 == 0 for i in only_a), name
    assert len(running.agent.state.selections()) == 2 * len(STRATEGIES) - 1  # a and the where filter's
    details = select(running, 3, "probcover").details
    assert {"delta", "delta_from", "covered", "median_nn_distance"} <= set(details)
    assert float(details["delta"]) > 0 and 0.0 < float(details["covered"]) <= 1.0
    assert select(running, 3, "random").details == {}


def test_old_selection_records_are_pruned_but_every_draw_is_kept(running: Running,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct Selects are recorded, but only the newest SELECTIONS_KEPT of those that are not uniform draws
    stay (pruned every PRUNE_EVERY records); every random / audit draw without a filter is kept, since its
    labels calibrate the priors."""
    from agent import core

    monkeypatch.setattr(core, "SELECTIONS_KEPT", 3)
    monkeypatch.setattr(core, "PRUNE_EVERY", 4)
    running.agent._recorded_since_prune = 0
    client.ingest(running.stub, make_samples(60, labels=12), batch=32)
    for seed in range(12):  # distinct requests: each is recorded
        select(running, 2, "typiclust", seed=seed)
        select(running, 2, "random", seed=seed)
        select(running, 2, "random", seed=seed, site="a")  # filtered: not a uniform draw
    kept = running.agent.state.selections()
    draws = [r for _, r, _, _ in kept if r["strategy"] == "random" and not r["where"]]
    others = [r for _, r, _, _ in kept if r not in draws]
    assert len(draws) == 12  # all kept
    assert 3 <= len(others) < 3 + 4  # the newest 3 after the last prune, and those recorded since
    assert max(int(str(r["seed"])) for r in others) == 11  # the newest survive


def test_select_budget_and_errors(running: Running) -> None:
    empty = select(running, 3)
    assert empty.selected == [] and empty.details["nothing_selected"] == "the pool is empty: ingest samples first"
    client.ingest(running.stub, make_samples(10, labels=4))
    assert len(select(running, 100).selected) == 6  # what is left
    assert code_of(lambda: select(running, 0))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, msg = code_of(lambda: select(running, 3, "nonsense"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "random" in msg and "coreset" in msg
    code, msg = code_of(lambda: running.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="random",
                                                                            params={"bogus": "1"})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bogus" in msg
    # an empty value is refused, not read as the default (it was)
    code, msg = code_of(lambda: running.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="probcover",
                                                                            params={"alpha": ""})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("param alpha is empty: leave it out for its ")
    code, msg = code_of(lambda: list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(
        method="knn", params={"calibrate": ""}))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("param calibrate is empty: leave it out")
    nowhere = select(running, 3, site="nowhere")
    assert nowhere.selected == [] and "no unlabelled sample matches where site=nowhere" in \
        nowhere.details["nothing_selected"]
    # another filter that matches nothing either (the same, empty, candidates): its own reason, not the cached one's
    elsewhere = select(running, 3, site="elsewhere")
    assert "no unlabelled sample matches where site=elsewhere" in elsewhere.details["nothing_selected"]
    client.submit_labels(running.stub, [(f"s{i}", "cat") for i in range(4, 10)], "alice")
    assert select(running, 3).details["nothing_selected"] == "every sample is labelled: nothing is left to select"


def test_uncertainty_without_labels_names_label_free_strategies(tmp_path) -> None:
    from agent.testing import publish_linear

    reg = tmp_path / "models"
    publish_linear(reg, size=(8, 8), dim=16)  # no logits head: uncertainty needs labels
    r = start(tmp_path / "data", reg)
    try:
        client.ingest(r.stub, make_samples(20))
        code, msg = code_of(lambda: select(r, 3, "entropy"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert any(name in msg for name in LABEL_FREE if name != "random")
    finally:
        r.stop()


def test_a_one_class_model_is_refused_by_uncertainty_strategies_and_warned_about(tmp_path) -> None:
    """A model fine-tuned on one labelled class (its manifest names one class, the agent's list): the
    strategies that need class probabilities refuse (they answered exit 0 with every score 0, the first ids
    in ingest order), and GetStatus says why; label-free strategies still answer."""
    from agent.testing import publish_linear

    reg = tmp_path / "models"
    publish_linear(reg, size=(8, 8), dim=16, classes=["zero"], rotation=True)  # das gets to its classifier
    r = start(tmp_path / "data", reg)
    try:
        client.ingest(r.stub, make_samples(20))
        client.submit_labels(r.stub, [("s0", "zero"), ("s1", "zero")], "alice")
        st = status(r)
        assert list(st.classes) == ["zero"] and st.model_version == "v0001"
        for name in sorted(set(STRATEGIES) - LABEL_FREE):
            code, msg = code_of(lambda name=name: select(r, 3, name))
            assert code == grpc.StatusCode.FAILED_PRECONDITION, name
            assert "knows only one class (\"zero\")" in msg and "shortlist cycle" in msg and "typiclust" in msg
        warned = [w for w in st.warnings if "knows one class (\"zero\")" in w]
        assert len(warned) == 1 and "margin" in warned[0] and "typiclust" in warned[0]
        assert len(select(r, 3, "typiclust").selected) == 3
    finally:
        r.stop()


def test_labels_keep_history_and_priors(running: Running) -> None:
    client.ingest(running.stub, make_samples(30))
    code, _ = code_of(lambda: list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn"))))
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # no labels yet
    reply = client.submit_labels(running.stub, [(f"s{i}", CLASSES[i % 3]) for i in range(9)], annotator="ann")
    assert reply.accepted == 9
    client.submit_labels(running.stub, [("s0", "dog")], annotator="other")
    state = running.agent.state
    rec = state.lookup("s0")
    assert rec is not None and [h[:2] for h in state.label_history(rec.seq)] == [("cat", "ann"), ("dog", "other")]
    assert status(running).labeled == 9
    client.submit_labels(running.stub, [("s0", "cat")], annotator="ann")
    for method in sorted(PRIOR_METHODS):
        priors = list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method=method)))
        assert {p.id for p in priors} == {f"s{i}" for i in range(9, 30)}, method
        for p in priors:
            assert p.model_version == "v0001" and set(p.probs) == set(CLASSES)
            assert abs(sum(p.probs.values()) - 1) < 1e-4 and p.label == max(p.probs, key=p.probs.__getitem__)
        # the colour clusters make the vote easy: a prior should mostly match the cluster
        right = sum(p.label == CLASSES[int(p.id[1:]) % 3] for p in priors)
        assert right >= 0.6 * len(priors), method
    some = list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=["s10", "s11"])))
    assert [p.id for p in some] == ["s10", "s11"]
    code, msg = code_of(lambda: list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn",
                                                                                          ids=["s1", "zz"]))))
    assert code == grpc.StatusCode.NOT_FOUND and "\"zz\"" in msg
    code, msg = code_of(lambda: list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="psychic"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "knn" in msg


def test_health_and_reflection(running: Running) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    for service in ("", SERVICE_NAME):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    req = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    files = next(iter(refl.ServerReflectionInfo(iter([req])))).file_descriptor_response.file_descriptor_proto
    assert files and b"IngestRequest" in files[0]


def test_an_open_health_watch_does_not_hold_up_a_shutdown(tmp_path: Path, registry: Path) -> None:
    """A Watch never ends on its own: the stop ends it (NOT_SERVING, then UNAVAILABLE) instead of waiting the
    whole grace for it; one opened after that ends at once."""
    r = start(tmp_path / "data", registry)
    got: list[int] = []
    ended: list[grpc.RpcError] = []

    def watch() -> None:
        try:
            for resp in health_pb2_grpc.HealthStub(r.channel).Watch(health_pb2.HealthCheckRequest(service="")):
                got.append(resp.status)
        except grpc.RpcError as e:
            ended.append(e)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not got:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.monotonic()
    stop_server(r.server, r.agent, grace=5.0)
    took = time.monotonic() - t0
    t.join(5)
    r.channel.close()
    assert took < 3, f"the stop took {took:.2f} s: it waited for the Watch"
    assert got == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
    assert ended and ended[0].code() == grpc.StatusCode.UNAVAILABLE
    assert ended[0].details() == "the agent is shutting down"


def test_a_health_watch_opened_after_the_watches_were_ended_ends_at_once(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        _PARTS[r.server].health.end_watches()  # as a stop does, before the server stops
        stream = health_pb2_grpc.HealthStub(r.channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        got = []
        with pytest.raises(grpc.RpcError) as e:
            for resp in stream:
                got.append(resp.status)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and got == [health_pb2.HealthCheckResponse.SERVING]
    finally:
        r.stop()


def test_concurrent_clients(running: Running) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(k: int) -> int:
        client.ingest(running.stub, make_samples(20, prefix=f"c{k}-", seed=k), batch=7)
        for _ in range(3):
            select(running, 5, "coreset", seed=k)
            status(running)
        # every stream also re-sends another's samples: duplicates must not fail
        return client.ingest(running.stub, make_samples(20, prefix=f"c{(k + 1) % 4}-", seed=(k + 1) % 4)).accepted

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    st = status(running)
    assert st.samples == 80 and st.embedded == 80
    view = running.agent.manager.current.index.view()  # type: ignore[union-attr]
    assert len(set(view.seqs.tolist())) == 80


def _labelled_pool(tmp_path, n: int = 1100) -> Running:
    """An agent without a model (nothing to embed) holding ``n`` samples, more than one chunk (1,024) of
    ListSamples' reads; s1 is a cat and, in a pool that large, s1090 (in the second chunk) a dog."""
    r = start(tmp_path / "data", tmp_path / "models", classes=tuple(CLASSES))
    assert client.ingest(r.stub, make_samples(n), batch=500).accepted == n
    labels = [("s1", "cat"), ("s1090", "dog")] if n > 1090 else [("s1", "cat")]
    assert client.submit_labels(r.stub, labels).accepted == len(labels)
    return r


def test_list_samples_labels_are_one_snapshot_taken_at_the_start(tmp_path) -> None:
    """Labels given, changed and taken back after the listing started show for no sample, early or late (was:
    read 1,024 samples at a time, so a label given meanwhile showed for a late sample but not an early one, and
    the training set of a cycle matched no state the agent was ever in)."""
    r = _labelled_pool(tmp_path)
    try:
        rows = r.agent.list_samples(True, False)
        first = next(rows)  # the first chunk read
        assert (first[0].id, first[1]) == ("s1", "cat")
        client.submit_labels(r.stub, [("s2", "dog"), ("s1095", "frog"), ("s1090", "frog")])
        client.retract_labels(r.stub, ["s1"])
        rest = {rec.id: name for rec, name, _ in rows}
        assert rest == {"s1090": "dog"}  # not s1095, not frog
        # every sample, labelled or not: the same snapshot
        everything = r.agent.list_samples(False, False)
        next(everything)
        client.submit_labels(r.stub, [("s1099", "cat")])
        labels = {rec.id: name for rec, name, _ in everything}
        assert len(labels) == 1099 and labels["s1099"] == "" and labels["s1095"] == "frog"
        # by ids: the labels as they were when the call started
        by_ids = r.agent.list_samples(False, False, ["s1", "s1099"])
        client.submit_labels(r.stub, [("s1", "dog")])
        assert [(rec.id, name) for rec, name, _ in by_ids] == [("s1", ""), ("s1099", "cat")]
    finally:
        r.stop()


def test_list_samples_sends_the_label_revision_of_its_snapshot(tmp_path) -> None:
    """ListSamples' initial metadata is the label revision (Status.label_events) its labels are at, taken with
    them: a cycle records which labels it trained on."""
    r = _labelled_pool(tmp_path, n=20)
    try:
        before = status(r).label_events
        events, rows = client.list_samples_at(r.stub, labeled_only=True)
        client.submit_labels(r.stub, [("s3", "frog")])
        assert events == before and status(r).label_events == before + 1
        assert [(s.id, s.label) for s in rows] == [("s1", "cat")]  # s1090 is not in a pool of 20
        events, rows = client.list_samples_at(r.stub, labeled_only=True)
        assert events == before + 1 and [s.id for s in rows] == ["s1", "s3"]
    finally:
        r.stop()
