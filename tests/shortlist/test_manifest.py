"""The registry never gives a removed version's number to another model: the high-water mark
(shortlist.manifest.publish, ``.last-version``)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from agent.testing import publish_linear
from shortlist.manifest import (
    HIGH_WATER_NAME,
    INTERPOLATIONS,
    Manifest,
    ManifestError,
    Preprocess,
    RegistryError,
    check_version,
    clear_trash,
    high_water,
    list_versions,
    model_fingerprint,
    remove_version,
    republish,
    same_model,
)

SIZE = (8, 8)


def test_a_removed_versions_number_is_never_reused(tmp_path: Path) -> None:
    """The operator's repro: v0003 served, its folder moved away, then a rollback or a new publish. Both
    used to come out as a new v0003 (a different model under a name an agent has embeddings for)."""
    models = tmp_path / "models"
    for seed in range(3):
        publish_linear(models, size=SIZE, seed=seed)
    removed = check_version(models / "v0003")
    shutil.move(models / "v0003", tmp_path / "v0003")
    assert republish(models, "v0001") == "v0004"  # a rollback
    assert publish_linear(models, size=SIZE, seed=7) == "v0005"  # a new model
    for name in ("v0002", "v0004", "v0005"):  # every folder but the oldest removed
        shutil.rmtree(models / name)
    assert publish_linear(models, size=SIZE, seed=8) == "v0006"
    assert list_versions(models) == ["v0001", "v0006"] and high_water(models) == 6
    assert not same_model(check_version(models / "v0006"), removed)


def test_a_registry_without_the_mark_continues_after_its_newest_folder(tmp_path: Path) -> None:
    """A registry written before the mark existed: the next number follows its newest folder, and the mark is
    written with it."""
    models = tmp_path / "models"
    for seed in range(2):
        publish_linear(models, size=SIZE, seed=seed)
    (models / HIGH_WATER_NAME).unlink()
    assert high_water(models) == 0
    assert publish_linear(models, size=SIZE, seed=2) == "v0003"
    assert (models / HIGH_WATER_NAME).read_text() == "v0003\n"


def test_an_unreadable_mark_publishes_nothing_and_says_what_to_do(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, seed=0)
    (models / HIGH_WATER_NAME).write_text("garbage")
    with pytest.raises(RegistryError, match="write the highest number that was ever published"):
        publish_linear(models, size=SIZE, seed=1)
    assert list_versions(models) == ["v0001"]


def test_concurrent_publishers_get_distinct_numbers_and_the_mark_the_highest(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, seed=0)
    got: list[str] = []
    threads = [threading.Thread(target=lambda s=seed: got.append(publish_linear(models, size=SIZE, seed=s)))
               for seed in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"v{n:04d}" for n in range(2, 10)]
    assert high_water(models) == 9


def test_the_model_fingerprint_is_equal_exactly_for_the_same_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, seed=0)
    publish_linear(models, size=SIZE, seed=1)
    copy = republish(models, "v0001")
    a, b, c = (check_version(models / v) for v in ("v0001", "v0002", copy))
    assert model_fingerprint(a) == model_fingerprint(c) and same_model(a, c)  # a rollback's copy: the same model
    assert model_fingerprint(a) != model_fingerprint(b) and not same_model(a, b)
    a.preprocess = Preprocess(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    c.preprocess = Preprocess(size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert model_fingerprint(a) == model_fingerprint(c) and same_model(a, c)
    c.classes = ["x"]
    assert model_fingerprint(a) != model_fingerprint(c) and not same_model(a, c)


def test_remove_version_is_out_of_the_registry_at_once_and_its_number_covered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry written before the mark existed: removing its newest folder still never frees that number;
    a deletion that fails after the rename leaves a trash folder no agent loads, which clear_trash deletes."""
    models = tmp_path / "models"
    for seed in range(3):
        publish_linear(models, size=SIZE, seed=seed)
    (models / HIGH_WATER_NAME).unlink()
    assert remove_version(models, "v0001") > 0
    assert high_water(models) == 3 and list_versions(models) == ["v0002", "v0003"]

    def fail(path: object, *args: object, **kw: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("shortlist.manifest.shutil.rmtree", fail)
    with pytest.raises(OSError, match=r"v0003 is out of the registry.*\.trash-v0003-.*delete it by hand"):
        remove_version(models, "v0003")
    monkeypatch.undo()
    assert list_versions(models) == ["v0002"]
    assert [p.name.startswith(".trash-v0003-") for p in models.iterdir() if p.name.startswith(".trash")] == [True]
    assert len(clear_trash(models)) == 1 and not [p for p in models.iterdir() if p.name.startswith(".trash")]
    assert publish_linear(models, size=SIZE, seed=9) == "v0004"


def test_an_unknown_interpolation_is_refused_with_the_valid_ones() -> None:
    block = {"size": [8, 8], "mean": [0, 0, 0], "std": [1, 1, 1]}
    assert Preprocess.from_dict(block).interpolation == "bilinear"  # the default when none is named
    for name in INTERPOLATIONS:
        assert Preprocess.from_dict({**block, "interpolation": name}).interpolation == name
    with pytest.raises(ManifestError, match="interpolation 'bicubc' is not one the agent knows: write one of "
                       "bilinear, bicubic, nearest, lanczos"):
        Preprocess.from_dict({**block, "interpolation": "bicubc"})


def test_output_name_names_the_embedding_and_changes_no_existing_fingerprint() -> None:
    m = Manifest(preprocess=Preprocess(size=(8, 8)), embedding_dim=16, outputs=["embedding"],
                 files={"encoder.onnx": "0" * 64})
    # what this manifest's fingerprint was before output_name existed: agents' stored embeddings stay theirs
    assert model_fingerprint(m) == "model:cc81d6cbe090d81db1e8760418ce9141354190b9f017df79eea62d9ff03a8d59"
    assert Manifest.from_json(m.to_json()).output_name == "embedding"
    m.outputs, m.output_name = ["feat"], "feat"
    assert Manifest.from_json(m.to_json()).output_name == "feat"
    assert model_fingerprint(m) != "model:cc81d6cbe090d81db1e8760418ce9141354190b9f017df79eea62d9ff03a8d59"
    m.output_name = "pooled"
    with pytest.raises(ManifestError, match=r"lists no 'pooled' output: .'feat'. .*set 'output_name' to one of them"):
        Manifest.from_json(m.to_json())


def test_a_publish_removes_the_staging_folders_killed_publishers_left(tmp_path: Path) -> None:
    """An export killed mid-write (kill -9) left its .tmp-export-PID-* folder (a model's worth of disk) for good:
    `models list` now names it, and the next publish removes it, when its process is gone or it is a day old;
    a folder whose process is alive (an export still writing) is left alone."""
    import os
    import subprocess
    import sys
    import time

    from typer.testing import CliRunner

    from shortlist.cli import app

    models = tmp_path / "models"
    publish_linear(models, size=SIZE)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = models / f".tmp-export-{gone.pid}-0123abcd"
    old = models / f".tmp-import-{os.getpid()}-4567cdef"
    live = models / f".tmp-export-{os.getpid()}-89abcdef"
    for folder in (dead, old, live):
        folder.mkdir()
        (folder / "encoder.onnx").write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    listed = CliRunner().invoke(app, ["models", "list", "--models", str(models)], env={"COLUMNS": "300"})
    said = " ".join(listed.output.split())
    assert listed.exit_code == 0 and "2 unfinished publish folder(s)" in said, said
    assert dead.name in said and old.name in said and live.name not in said
    assert publish_linear(models, size=SIZE, seed=1) == "v0002"
    assert not dead.exists() and not old.exists() and live.is_dir()
    shutil.rmtree(live)
    listed = CliRunner().invoke(app, ["models", "list", "--models", str(models)], env={"COLUMNS": "300"})
    assert listed.exit_code == 0 and "unfinished publish" not in listed.output


def test_the_resize_mode_round_trips_and_changes_no_squashing_models_fingerprint() -> None:
    crop = Preprocess(size=(224, 224), resize="crop", crop_fraction=0.875)
    m = Manifest(preprocess=crop, embedding_dim=16, outputs=["embedding"], files={"encoder.onnx": "0" * 64})
    assert Manifest.from_json(m.to_json()).preprocess == crop
    assert json.loads(m.to_json())["preprocess"] == crop.to_dict()
    assert crop.to_dict()["resize"] == "crop" and crop.to_dict()["crop_fraction"] == 0.875
    squash = Preprocess(size=(224, 224))
    assert "crop_fraction" not in squash.to_dict() and Preprocess.from_dict(squash.to_dict()) == squash
    crop_print = model_fingerprint(m)
    m.preprocess = squash
    assert model_fingerprint(m) != crop_print  # another input: another model
    old = json.loads(m.to_json())
    del old["preprocess"]["resize"]  # a manifest written before the field: the same model, the same fingerprint
    assert Manifest.from_json(json.dumps(old)).preprocess == squash
    assert model_fingerprint(Manifest.from_json(json.dumps(old))) == model_fingerprint(m)


@pytest.mark.parametrize(("extra", "says"), [
    ({"resize": "fit"}, "preprocess resize 'fit' is not a mode the agent knows: write one of squash, crop"),
    ({"resize": "crop", "crop_fraction": 0}, "crop_fraction 0.0 must be a number in (0, 1]"),
    ({"resize": "crop", "crop_fraction": 1.5}, "crop_fraction 1.5 must be a number in (0, 1]"),
    ({"resize": "crop", "crop_fraction": "0.875"}, "'preprocess.crop_fraction' is \"0.875\""),
    ({"resize": "crop", "crop_fraction": float("nan")}, "crop_fraction nan must be a number in (0, 1]"),
    ({"resize": "crop", "crop_fraction": 0.001}, "would resize images to 8000 px a side"),
    ({"crop_fraction": 0.875}, "is given with resize \"squash\", which does not crop"),
])
def test_a_bad_resize_mode_or_crop_fraction_is_refused_with_what_to_write(extra: dict[str, object], says: str) -> None:
    with pytest.raises(ManifestError) as e:
        Preprocess.from_dict({"size": [8, 8], "mean": [0, 0, 0], "std": [1, 1, 1], **extra})
    assert says in str(e.value)


def _manifest_dict(**preprocess: object) -> dict[str, object]:
    pre = Preprocess(size=(8, 8), **preprocess)  # type: ignore[arg-type]
    m = Manifest(preprocess=pre, embedding_dim=16, outputs=["embedding"], files={"encoder.onnx": "0" * 64})
    d: dict[str, object] = json.loads(m.to_json())
    return d


@pytest.mark.parametrize(("path", "value"), [
    ("created", 5), ("method", [1]), ("arch", ["resnet18"]), ("dataset", {}), ("source_run", 1.5), ("git_commit", True),
    ("republished_from", 3), ("input_name", 7), ("output_name", ["embedding"]), ("embedding_dim", "16"),
    ("embedding_dim", 16.0), ("embedding_dim", True), ("outputs", "embedding"), ("outputs", [1]),
    ("classes", "a"), ("classes", [1]), ("files", []), ("files", {"encoder.onnx": 5}), ("training_config", []),
    ("verification", "ok"), ("preprocess", 5), ("preprocess.size", [8]), ("preprocess.size", [8.5, 8]),
    ("preprocess.size", ["8x", 8]), ("preprocess.mean", ["zero", 0, 0]),
    ("preprocess.mean", "0"), ("preprocess.std", [1, 1]), ("preprocess.interpolation", 2),
    ("preprocess.resize", None), ("preprocess.crop_fraction", "1"),
])
def test_every_field_of_a_wrong_type_is_refused_naming_it_and_what_to_write(path: str, value: object) -> None:
    d = _manifest_dict()
    *outer, key = path.split(".")
    target: dict[str, object] = d
    for part in outer:
        target = target[part]  # type: ignore[assignment]
    target[key] = value
    with pytest.raises(ManifestError) as e:
        Manifest.from_json(json.dumps(d))
    said = str(e.value)
    assert f"'{path}" in said and ": write " in said and "\n" not in said, said


@pytest.mark.parametrize(("path", "value", "means"), [
    ("preprocess.size", [8.0, 8.0], (8, 8)), ("preprocess.size", ["8", 8], (8, 8)),
    ("preprocess.mean", ["0.4914", "0.4822", 0.4465], (0.4914, 0.4822, 0.4465)),
    ("preprocess.std", ["0.2470", 0.2435, "0.2616"], (0.2470, 0.2435, 0.2616)),
    ("format", 1.0, 1), ("created", None, ""), ("git_commit", None, ""), ("arch", None, ""), ("method", None, ""),
    ("dataset", None, ""), ("source_run", None, ""), ("republished_from", None, ""), ("training_config", None, {}),
    ("verification", None, {}),
])
def test_what_the_reader_before_the_schema_check_served_is_read_as_it_meant(
        path: str, value: object, means: object) -> None:
    """A manifest not written by Shortlist (another JSON writer's 8.0, nulls for what it does not know, numbers as
    text) that the agent of commit a0440ea served must still be served, as the same model (its fingerprint, under
    which the agent stored its embeddings), after an upgrade: it used to be refused, leaving the agent without one."""
    clean = _manifest_dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
    d = json.loads(json.dumps(clean))
    *outer, key = path.split(".")
    target: dict[str, object] = d
    for part in outer:
        target = target[part]  # type: ignore[assignment]
    target[key] = value
    m = Manifest.from_json(json.dumps(d))
    got = m.preprocess if outer else m
    assert getattr(got, key) == means
    assert model_fingerprint(m) == model_fingerprint(Manifest.from_json(json.dumps(clean)))
    if outer:  # a checkpoint's preprocess block is read the same way
        assert getattr(Preprocess.from_dict(target), key) == means


def test_every_bad_field_is_named_in_one_refusal() -> None:
    """Not only the first: a hand-written manifest is fixed in one edit, not one restart per field."""
    d = _manifest_dict()
    d |= {"created": 5, "method": [1], "embedding_dim": "16"}
    del d["preprocess"]["std"]  # type: ignore[attr-defined]
    with pytest.raises(ManifestError) as e:
        Manifest.from_json(json.dumps(d))
    said = str(e.value)
    for part in ("manifest has no 'preprocess.std'", "'created' is 5", "'method' is [1]", "'embedding_dim' is \"16\""):
        assert part in said, (part, said)
    assert "\n" not in said and "Traceback" not in said


@pytest.mark.parametrize("path", ["preprocess", "embedding_dim", "outputs", "preprocess.size", "preprocess.mean",
                                  "preprocess.std"])
def test_every_missing_required_key_is_refused_naming_it(path: str) -> None:
    d = _manifest_dict()
    *outer, key = path.split(".")
    target: dict[str, object] = d
    for part in outer:
        target = target[part]  # type: ignore[assignment]
    del target[key]
    with pytest.raises(ManifestError) as e:
        Manifest.from_json(json.dumps(d))
    assert f"manifest has no '{path}': write " in str(e.value)


def test_crop_is_written_as_format_2_squash_as_format_1_and_format_1_asking_for_crop_is_refused() -> None:
    # An agent older than resize "crop" reads format 1 only and ignores resize: a crop model must not be format 1.
    squash, crop = _manifest_dict(), _manifest_dict(resize="crop", crop_fraction=0.875)
    assert squash["format"] == 1 and crop["format"] == 2
    old_reader_formats = (1,)  # what an older agent's from_json accepted ("upgrade shortlist" otherwise)
    assert crop["format"] not in old_reader_formats and squash["format"] in old_reader_formats
    assert Manifest.from_json(json.dumps(crop)).preprocess.resize == "crop"  # both read here
    assert Manifest.from_json(json.dumps({**squash, "format": 2})).preprocess.resize == "squash"
    with pytest.raises(ManifestError, match=r"format 1 cannot ask for resize 'crop'.*write \"format\": 2"):
        Manifest.from_json(json.dumps({**crop, "format": 1}))  # a hand edit: an old agent would squash
    with pytest.raises(ManifestError, match="upgrade shortlist"):
        Manifest.from_json(json.dumps({**crop, "format": 3}))


@pytest.mark.parametrize(("value", "got"), [
    (True, "true"), (False, "false"), (1.5, "1.5"), ("1", '"1"'), (None, "null"), ([1], "[1]"), ("missing", None),
])
def test_a_format_that_is_not_an_integer_says_what_to_write_not_to_upgrade(value: object, got: str | None) -> None:
    """No version of Shortlist reads a format of true or "1": the refusal names the field and the value to write
    (it used to say "unsupported manifest format True ...; upgrade shortlist to serve it")."""
    d = _manifest_dict()
    if value == "missing":
        del d["format"]
    else:
        d["format"] = value
    with pytest.raises(ManifestError) as e:
        Manifest.from_json(json.dumps(d))
    said = str(e.value)
    start = "manifest has no 'format'" if got is None else f"manifest 'format' is {got} (not an integer)"
    assert said == f"{start}: write 2 where preprocess.resize is \"crop\", else 1", said
    assert "upgrade" not in said


def test_a_size_that_is_not_an_integer_names_the_field_and_what_to_write() -> None:
    d = _manifest_dict()
    d["preprocess"]["size"] = [8.5, 8]  # type: ignore[index]
    with pytest.raises(ManifestError) as e:
        Manifest.from_json(json.dumps(d))
    assert str(e.value) == ("manifest 'preprocess.size.0' is 8.5 (input should be a valid integer): write [height, "
                            "width] in pixels, two integers")
