"""The CLI's own messages (shortlist label's file checks, export, models, check) quote a user's value the way
the agent's gRPC reasons do (agent.errors.quoted: a JSON string, ``"ana\\"\\nb"``), not with Python's repr
(``'ana"\\nb'``, ``'caf\\xe9'``), so one tool does not show one value two ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agent import exports
from agent.cli import _pairs
from agent.testing import publish_linear
from shortlist.cli import app
from tests.agent.conftest import SIZE

ODD = 'ana"\nb'  # a quote and a newline: repr gives 'ana"\nb', JSON "ana\"\nb"


def test_export_messages_quote_ids_and_classes_as_json() -> None:
    with pytest.raises(exports.ExportError) as e:
        exports.check_class_folder("a/b\u200b")
    assert str(e.value) == ('class "a/b\\u200b" cannot be a folder name, so it cannot be written as an ImageFolder '
                            "tree; export with --format csv,jsonl,fiftyone")
    note = exports.left_out_note([(ODD, "cat", "its payload cannot be decoded (truncated)")], "the images")
    assert note.startswith('1 labelled sample(s) left out of the images, their stored payload cannot be read (e.g. '
                           '"ana\\"\\nb": its payload cannot be decoded (truncated)); they are listed in problems.csv')


def test_a_key_value_option_quotes_what_it_refuses_as_json() -> None:
    with pytest.raises(typer.BadParameter) as e:
        _pairs([ODD], "--param")
    assert str(e.value) == '--param "ana\\"\\nb" must look like key=value'


def test_models_rollback_quotes_an_unknown_version_as_json(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    res = CliRunner().invoke(app, ["models", "rollback", "café", "--models", str(models), "--json", "--no-reload"])
    assert res.exit_code == 2, res.output
    assert json.loads(res.stdout)["error"] == (
        f'no version "café" in {models} (versions: v0001; `shortlist models list` shows them)')
