"""The committed generated code must be exactly what scripts/gen_protos.py makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc generated nothing"
    for rel in generated:
        committed = ROOT / rel
        assert committed.is_file(), f"{rel} is not committed: run scripts/gen_protos.py"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} is out of date with protos/: run `python scripts/gen_protos.py` and commit the result")


def test_contract_names_are_kept() -> None:
    from shortlist.v1 import agent_pb2

    service = agent_pb2.DESCRIPTOR.services_by_name["Agent"]
    assert {m.name for m in service.methods} >= {
        "Ingest", "Select", "SubmitLabels", "PriorLabels", "ListSamples", "GetStatus", "ReloadModel", "GetMap"}
    sample = agent_pb2.Sample.DESCRIPTOR.fields_by_name
    assert (sample["id"].number, sample["encoded_image"].number, sample["tensor"].number, sample["label"].number) == (
        1, 2, 3, 6)
