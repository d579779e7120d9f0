"""Values a client sent are quoted in Rejection reasons and status messages as JSON strings (double quotes,
``\\n`` and ``"`` escaped, other characters kept), the same from every call, not Python's repr
(``'ana\\n'``), which a Node, Go or Java client's user finds odd and which depends on Python's escaping."""

from __future__ import annotations

import json

import grpc
import pytest

from agent import client
from agent.errors import quoted
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_images, png

ODD = 'ana"\nb'  # a quote and a newline


def test_quoted_is_json_with_non_ascii_kept_and_invisible_characters_escaped() -> None:
    assert quoted(ODD) == '"ana\\"\\nb"' and quoted("café") == '"café"'
    assert quoted("star\u200bfish") == '"star\\u200bfish"'  # prints nothing: escaped so it can be seen
    for value in (ODD, "café", "star\u200bfish", "\u00a0x\U000e0001"):
        assert json.loads(quoted(value)) == value  # a client can parse the value back


def test_an_id_with_a_newline_and_a_quote_is_json_quoted_in_a_rejection(running: Running) -> None:
    reply = client.ingest(running.stub, [client.image_sample(ODD, png(make_images(1)[0]))])
    assert [r.id for r in reply.rejected] == [ODD]
    assert reply.rejected[0].reason.startswith('id "ana\\"\\nb" holds control characters or invisible ones (U+000A)')
    labels = running.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=ODD, label="cat")], annotator="ana"))
    assert labels.rejected[0].reason == 'unknown id "ana\\"\\nb": ingest it first'


def test_a_status_message_quotes_the_same_way(running: Running) -> None:
    with pytest.raises(grpc.RpcError) as e:
        running.stub.RenameClass(agent_pb2.RenameClassRequest(from_class=ODD, to_class="x", annotator="ana"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert str(e.value.details()).startswith('no class "ana\\"\\nb" to rename')
