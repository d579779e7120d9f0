"""An id that differs from a stored one only in Unicode normalisation (an NFD file name from macOS ingested, the
NFC name from a CSV sent) was answered "unknown id '...': ingest it first", though both look the same: the
unknown-id messages of SubmitLabels, RetractLabels, DeleteSamples, ListSamples and PriorLabels say so."""

from __future__ import annotations

import unicodedata

import grpc
import pytest

from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples

NAME = "nfd/forêt_é.png"
NFD, NFC = unicodedata.normalize("NFD", NAME), unicodedata.normalize("NFC", NAME)


def test_unknown_ids_that_differ_only_in_unicode_form_say_so(running: Running) -> None:
    r = running
    samples = make_samples(3)
    samples[0].id, samples[1].id = NFD, "nfc/" + NFC[4:]
    assert r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples)])).accepted == 3
    nfd_of_second = unicodedata.normalize("NFD", samples[1].id)
    reply = r.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=NFC, label="cat"), agent_pb2.LabelAssignment(id=nfd_of_second,
                                                                                          label="cat"),
                agent_pb2.LabelAssignment(id="nope", label="cat")], annotator="ana"))
    assert [x.id for x in reply.rejected] == [NFC, nfd_of_second, "nope"]
    assert reply.rejected[0].reason == (
        f"unknown id \"{NFC}\": a stored id differs from it only in Unicode form (stored NFD, sent NFC; ids are "
        "compared exactly, byte for byte): send the id as stored, normalised to NFD")
    assert "(stored NFC, sent NFD;" in reply.rejected[1].reason
    assert reply.rejected[2].reason == "unknown id \"nope\": ingest it first"
    retract = r.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=[NFC], annotator="ana"))
    delete = r.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=[NFC], annotator="ana", reason="x"))
    for rep in (retract, delete):
        assert [x.id for x in rep.rejected] == [NFC] and "only in Unicode form (stored NFD" in rep.rejected[0].reason
    for call in (lambda: list(r.stub.ListSamples(agent_pb2.ListSamplesRequest(ids=["nope", NFC]))),
                 lambda: list(r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=[NFC])))):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"\"{NFC}\": a stored id differs from it only in Unicode form (stored NFD, sent NFC" in e.value.details()
    # once the NFD sample is deleted, its NFC form is plainly unknown
    assert r.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=[NFD], annotator="ana", reason="x")).accepted == 1
    gone = r.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[agent_pb2.LabelAssignment(id=NFC, label="cat")],
                                                             annotator="ana"))
    assert gone.rejected[0].reason == f"unknown id \"{NFC}\": ingest it first"
