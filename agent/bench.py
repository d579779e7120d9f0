"""``shortlist bench agent``: raw onnxruntime images/s against gRPC Ingest end to end, same model.

(a) raw: ``session.run`` on an already preprocessed batch, nothing else.
(b) end to end: a client streams JPEG bytes through Ingest to a real server (in this process, on a
    loopback port) and the clock stops at the reply, i.e. once every image is decoded, embedded,
    its blob flushed, its row committed to SQLite (synchronous=FULL) and added to the hnswlib index.
The two are measured in alternating rounds (raw, ingest, raw, ingest, ...) and the median of the
per-round ratios is reported, so that load from other processes on a shared machine hits both alike.
"""

from __future__ import annotations

import io
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agent import client
from agent.config import AgentConfig
from agent.embedder import Embedder, newest_servable
from agent.service import create_server, stop_server
from agent.testing import conv_encoder, publish_model
from shortlist.images import decode_payload, encode_png, preprocess_image
from shortlist.manifest import CIFAR10_PREPROCESS
from shortlist.v1 import agent_pb2

log = logging.getLogger(__name__)


def bench_images(n: int, size: tuple[int, int], source: str | None = None) -> list[bytes]:
    """n encoded images: from ``source`` (any shortlist.datasets source; fewer when it holds fewer) or synthetic
    smooth-noise JPEGs. A file of the source that Ingest would reject (not a readable image: the same check,
    ``decode_payload``) is left out, and one warning names the first ones with their reasons, as ingest and
    pretrain do: the bench times Ingest's accepted images only. ValueError when none is readable."""
    from PIL import Image

    if source:
        from shortlist.datasets import first_reasons, iter_images, skipped_summary

        images: list[bytes] = []
        skipped: list[tuple[str, str]] = []
        for it in iter_images(source):
            if len(images) >= n:
                break
            data = it.encoded if it.encoded is not None else encode_png(np.asarray(it.pixels))
            try:
                decode_payload("image", data, "", (), None)  # full size: what Ingest checks before embedding
            except ValueError as e:
                skipped.append((it.uri, str(e)))
                continue
            images.append(data)
        if skipped and not images:
            raise ValueError(f"none of the {len(skipped):,} files of {source} is a readable image: "
                             f"{first_reasons(skipped)}")
        if skipped:
            log.warning("%s", skipped_summary(skipped, len(images) + len(skipped)))
        return images
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (max(1, size[0] // 4), max(1, size[1] // 4), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bench_ingest(models: Path | None, n: int = 4096, batch: int = 256, rounds: int = 3,
                 source: str | None = None, use_cuda: bool = True) -> dict[str, Any]:
    """Run the benchmark; returns the figures (images/s per round and medians)."""
    with tempfile.TemporaryDirectory(prefix="shortlist-bench-") as tmp:
        registry = models
        if registry is None:
            registry = Path(tmp) / "models"
            publish_model(registry, conv_encoder(), CIFAR10_PREPROCESS, method="bench")
        found = newest_servable(registry)  # what the agent below serves: refused versions are skipped
        if isinstance(found, str):
            raise ValueError(found)
        version, manifest = found
        size = manifest.preprocess.size
        per_round = max(batch, n // rounds // batch * batch)
        images = bench_images(per_round * rounds + batch, size, source)

        emb = Embedder(registry / version, manifest, batch_size=batch, use_cuda=use_cuda)
        x = manifest.preprocess.normalize(np.stack([preprocess_image(b, manifest.preprocess) for b in images[:batch]]))
        emb.session.run(emb.outputs, {emb.input_name: x})  # warm-up

        def raw_rate() -> float:
            reps = per_round // batch
            t0 = time.perf_counter()
            for _ in range(reps):
                emb.session.run(emb.outputs, {emb.input_name: x})
            return reps * len(x) / (time.perf_counter() - t0)

        def samples(prefix: str, data: list[bytes]) -> Iterator[agent_pb2.Sample]:
            for i, b in enumerate(data):
                yield client.image_sample(f"{prefix}{i}", b)

        server, port, agent = create_server(AgentConfig(Path(tmp) / "data", registry, port=0, batch_size=batch,
                                                        use_cuda=use_cuda))
        raws, e2es = [], []
        try:
            stub = client.connect(f"127.0.0.1:{port}")
            client.ingest(stub, samples("warm", images[:batch]), batch)
            for r in range(rounds):
                raws.append(raw_rate())
                chunk = images[batch + r * per_round: batch + (r + 1) * per_round]
                t0 = time.perf_counter()
                reply = client.ingest(stub, samples(f"r{r}-", chunk), batch)
                e2es.append(reply.accepted / (time.perf_counter() - t0))
                if reply.accepted != len(chunk):
                    raise RuntimeError(f"ingest accepted {reply.accepted} of {len(chunk)}: {reply.rejected[:3]}")
            provider = emb.provider
        finally:
            stop_server(server, agent)
    ratios = [e / r for e, r in zip(e2es, raws, strict=True)]
    return {"model": f"{registry}/{version}" if models else "bench CNN (agent.testing.conv_encoder)",
            "provider": provider, "input": list(size), "images_per_round": per_round, "rounds": rounds,
            "batch": batch, "raw_images_per_s": raws, "ingest_images_per_s": e2es, "ratios": ratios,
            "raw_median": statistics.median(raws), "ingest_median": statistics.median(e2es),
            "ratio_median": statistics.median(ratios)}
