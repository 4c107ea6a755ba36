"""Trajectory shards: WebDataset tars written atomically, read back without pickle.

A dataset folder written by ``prefkit generate``::

    manifest.json                  resolved settings, model, plan, counts (schemas/manifest.schema.json)
    shard-000000.tar ...           finished shards, never rewritten
    embeddings/shard-000000.safetensors   (with --store-embeddings) one entry per prompt group
    preview.png                    a grid of the first images
    .partial/                      shards being written (moved into place when complete)

Each sample of a shard has the key ``g{group:08d}_s{index:02d}`` (no dots: WebDataset's key is
everything before the first dot) and exactly these files:

===================  ==========================  ===========================================
file                 contents                    shape / type
===================  ==========================  ===========================================
``latents.npy``      the chain x_T ... x_0       float16 [K + 1, C, h, w] (x_k -> x_k+1 are slices)
``timesteps.npy``    the denoiser's timesteps    int64 [K] (DDIM) / float32 [K] (flow)
``sigmas.npy``       flow models only            float32 [K + 1]
``logprobs.npy``     lp of each step (mean)      float32 [K]
``png``              the final image             PNG
``json``             metadata                    schemas/trajectory.schema.json
===================  ==========================  ===========================================
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from prefkit.fileio import atomic_write_bytes, fsync_dir, removed_on_failure  # noqa: F401 (re-exported)

SHARD_PATTERN = "shard-%06d.tar"
SHARD_GLOB = "shard-*.tar"
PARTIAL_DIR = ".partial"
MANIFEST = "manifest.json"


def sample_key(group: int, index: int) -> str:
    return f"g{group:08d}_s{index:02d}"


def group_key(group: int) -> str:
    return f"g{group:08d}"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def json_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")


def write_shard(folder: Path, index: int, samples: Iterable[dict[str, Any]]) -> Path:
    """Write one finished shard atomically: into ``.partial/``, fsync, then rename into ``folder``.

    Each sample is a dict with ``__key__`` and file-extension -> bytes entries. A reader never sees a
    partial shard: ``shard-*.tar`` appears only complete.
    """
    import webdataset as wds

    folder = Path(folder)
    partial = folder / PARTIAL_DIR
    partial.mkdir(parents=True, exist_ok=True)
    final = folder / (SHARD_PATTERN % index)
    tmp = partial / final.name
    with removed_on_failure(tmp, name=final), open(tmp, "wb") as f:
        # a fixed mtime makes a shard's bytes a function of its samples: regenerating is reproducible
        writer = wds.TarWriter(f, encoder=False, mtime=0.0)
        try:
            for sample in samples:
                writer.write(sample)
        finally:  # also after a failed write: an unclosed tar stream writes to the closed file when collected
            writer.close()
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(folder)
    return final


def finished_shards(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob(SHARD_GLOB))


def shard_index(path: Path) -> int:
    return int(Path(path).name.split("-")[1].split(".")[0])


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw WebDataset sample (bytes per file) -> numpy arrays, PIL image and dict. No pickle."""
    from PIL import Image

    out: dict[str, Any] = {"__key__": raw["__key__"]}
    for name, value in raw.items():
        if name.startswith("__"):
            continue
        if name.endswith(".npy"):
            out[name[: -len(".npy")]] = npy_load(value)
        elif name == "png":
            out["image"] = Image.open(io.BytesIO(value)).convert("RGB")
        elif name == "json":
            out["record"] = json.loads(value)
    return out


def iter_samples(folder_or_shards, decode: bool = True) -> Iterator[dict[str, Any]]:
    """Stream samples of a dataset folder (or a list of shard paths) with ``webdataset``, in order.

    Every process reads every shard: ``nodesplitter`` is the identity, because webdataset's default
    refuses to run (ValueError) once torch.distributed is initialized, as under ``accelerate launch``.
    """
    import webdataset as wds

    if isinstance(folder_or_shards, (str, Path)):
        shards = finished_shards(Path(folder_or_shards))
    else:
        shards = list(folder_or_shards)
    if not shards:
        return
    from prefkit.fileio import reading

    for shard in shards:  # one at a time, so that an error names the shard
        ds = wds.WebDataset([str(shard)], shardshuffle=False, empty_check=False, nodesplitter=_all_shards)
        with reading(shard):
            for raw in ds:
                yield decode_sample(raw) if decode else raw


def _all_shards(src):
    yield from src


def read_manifest(folder: Path) -> dict[str, Any]:
    from prefkit.errors import PrefkitError
    from prefkit.fileio import parse_json

    path = Path(folder) / MANIFEST
    try:
        manifest = parse_json(path.read_bytes(), str(path), whole_file=True)
    except FileNotFoundError:
        raise PrefkitError(f"{path}: no manifest; is this a folder written by `prefkit generate`?") from None
    if not isinstance(manifest, dict):
        raise PrefkitError(
            f"{path}: a manifest is a JSON object, not a {type(manifest).__name__}; "
            "this folder was not written by `prefkit generate` (or the file is damaged)"
        )
    return manifest
