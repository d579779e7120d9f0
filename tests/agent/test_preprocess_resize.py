"""The agent resizes every image as the served version's manifest says (shortlist.manifest.Preprocess.resize):
an old manifest without the field squashes exactly as before, a "crop" one is fed the centre crop, and a manifest
whose mode or crop fraction the agent does not know is refused with a warning saying what to write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from agent.config import AgentConfig
from agent.core import Agent
from agent.embedder import Embedder
from agent.ingest import Incoming
from agent.testing import linear_encoder, publish_model
from shortlist.manifest import MANIFEST_NAME, Preprocess, check_version
from tests.agent.conftest import SIZE, png

# field photos: 4:3 landscape and portrait, 16:9
SHAPES = [(12, 16), (16, 12), (9, 16), (12, 16)]


def photos() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in SHAPES]


def vectors(a: Agent) -> np.ndarray:
    """The served version's stored embeddings, in ingest order (NxD)."""
    assert a.manager.current is not None
    view = a.manager.current.index.view()
    return view.vecs[np.argsort(view.seqs)]


def test_an_old_manifest_squashes_bit_identically_and_a_crop_one_is_fed_the_centre_crop(tmp_path: Path) -> None:
    models = tmp_path / "models"
    old = publish_model(models, linear_encoder(SIZE, seed=0), Preprocess(size=SIZE))
    manifest_path = models / old / MANIFEST_NAME
    d = json.loads(manifest_path.read_text())
    del d["preprocess"]["resize"]  # as every manifest written before the field
    manifest_path.write_text(json.dumps(d))
    a = Agent(AgentConfig(tmp_path / "data", models, background=False, use_cuda=False))
    try:
        images = photos()
        assert a.ingest.batch([Incoming(f"x{i}", "image", png(im), png(im)) for i, im in enumerate(images)]
                              ).accepted == len(images)
        squashed = np.stack([np.asarray(Image.fromarray(im).resize(SIZE[::-1], Image.Resampling.BILINEAR))
                             for im in images])  # what the agent fed every model before the field existed
        emb = Embedder(models / old, check_version(models / old), use_cuda=False)
        np.testing.assert_array_equal(vectors(a), emb.embed(squashed).vecs)

        crop = Preprocess(size=SIZE, resize="crop", crop_fraction=0.5)  # the same weights, fed centre crops
        new = publish_model(models, linear_encoder(SIZE, seed=0), crop)
        a.manager.check()  # embeds the stored pool with it (decode_stored), then serves it
        assert a.status().model_version == new and not a.status().warnings
        cropped = []
        for im in images:  # shorter side to 8 / 0.5 = 16, the longer int(16 * 4 / 3) = 21 or int(16 * 16 / 9) = 28
            h, w = im.shape[:2]
            nh, nw = (16, int(16 * w / h)) if w >= h else (int(16 * h / w), 16)
            top, left = round((nh - 8) / 2), round((nw - 8) / 2)
            big = Image.fromarray(im).resize((nw, nh), Image.Resampling.BILINEAR)
            cropped.append(np.asarray(big.crop((left, top, left + 8, top + 8))))
        want = Embedder(models / new, check_version(models / new), use_cuda=False).embed(np.stack(cropped)).vecs
        np.testing.assert_allclose(vectors(a), want, atol=1e-6)
        assert not np.allclose(vectors(a), emb.embed(squashed).vecs, atol=1e-3)  # not what squashing gives
    finally:
        a.close()


def test_a_version_with_an_unknown_resize_mode_or_a_bad_crop_fraction_is_refused_with_a_warning(
        tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_model(models, linear_encoder(SIZE, seed=0), Preprocess(size=SIZE))
    a = Agent(AgentConfig(tmp_path / "data", models, background=False, use_cuda=False))
    try:
        for version, block, says in [
                ("v0002", {"resize": "letterbox"}, "preprocess resize 'letterbox' is not a mode the agent knows: "
                 "write one of squash, crop in the manifest's preprocess block"),
                ("v0003", {"resize": "crop", "crop_fraction": 1.25}, "preprocess crop_fraction 1.25 must be a "
                 "number in (0, 1]")]:
            name = publish_model(models, linear_encoder(SIZE, seed=1), Preprocess(size=SIZE))
            assert name == version
            path = models / name / MANIFEST_NAME
            d = json.loads(path.read_text())
            d["preprocess"] |= block
            path.write_text(json.dumps(d))
            a.manager.check()
            st = a.status()
            assert st.model_version == "v0001", st.warnings
            assert [w for w in st.warnings if w.startswith(f"{name} refused: ") and says in w], st.warnings
    finally:
        a.close()
