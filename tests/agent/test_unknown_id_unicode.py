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


def test_empty_ids_in_reads_are_invalid_and_padded_ids_get_a_hint(running: Running) -> None:
    # "" was NOT_FOUND "...; ingest them first" (it can never be ingested); " s1" got no hint that the blank
    # is the cause; ListSamples' and GetImages' NOT_FOUND said nothing of what to do.
    r = running
    assert r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(6, labels=3))])).accepted == 6
    reads = {
        "ListSamples": lambda ids: list(r.stub.ListSamples(agent_pb2.ListSamplesRequest(ids=ids))),
        "PriorLabels": lambda ids: list(r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=ids))),
        "GetImages": lambda ids: r.stub.GetImages(agent_pb2.GetImagesRequest(ids=ids, max_side=32)),
    }
    for name, read in reads.items():
        with pytest.raises(grpc.RpcError) as e:
            read(["s4", ""])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert e.value.details() == (f"an empty id in the {name} request's ids (at 1): no sample has one; give the "
                                     "ids of stored samples")
        with pytest.raises(grpc.RpcError) as e:
            read(["s4", " s5", "nope"])
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, name
        assert e.value.details() == (
            "2 unknown id(s): \" s5\", \"nope\" (\" s5\": \"s5\" is stored: the id sent has white space at an end (ids "
            "are compared exactly, byte for byte): send it without); ingest them first, or ask for stored ids "
            "(ListSamples without ids lists them)"), name
    reply = r.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id="s5 ", label="cat")], annotator="ana"))
    assert reply.rejected[0].reason == ("unknown id \"s5 \": \"s5\" is stored: the id sent has white space at an end "
                                        "(ids are compared exactly, byte for byte): send it without")
    delete = r.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=["\ts5"], annotator="ana", reason="x"))
    assert delete.accepted == 0 and "white space at an end" in delete.rejected[0].reason
