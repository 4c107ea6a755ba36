"""Trajectory shards: WebDataset tars written atomically, read back as plain tar, bounded and checked
against the manifest, without pickle.

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
import math
import os
import re
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


# -- reading: plain tar, every member bounded by the manifest before it is read ---------------------------

NPY_HEADER_MAX = 4096  # bytes a .npy member may hold beyond its array data (numpy writes 128)
MAX_JSON_BYTES = 1 << 20  # a sample's metadata record
MAX_LATENT_BYTES = 1 << 31  # a latent chain, whatever the manifest claims
MAX_PNG_BYTES = 1 << 28
KEY = re.compile(r"[A-Za-z0-9_-]+")
COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


@dataclass(frozen=True)
class ShardSpec:
    """What each member of a sample may be, from the dataset's manifest: the largest size of each field
    (checked from the tar header, before a byte of the member is read), and each array's dtype and shape."""

    files: tuple[str, ...]
    max_bytes: dict[str, int]
    arrays: dict[str, tuple[str, tuple[int, ...]]]  # field -> (dtype name, shape)
    image_size: tuple[int, int]  # (width, height) of the PNG

    @classmethod
    def from_manifest(cls, manifest: Any, where: Path) -> ShardSpec:
        from prefkit.errors import PrefkitError

        try:
            sampler, settings = manifest["sampler"], manifest["settings"]
            shape = tuple(int(n) for n in sampler["latent_shape"])
            latent = np.dtype(sampler["latent_dtype"])
            height, width = int(settings["height"]), int(settings["width"])
            files = tuple(str(f) for f in manifest["files"])
            ddim = manifest["sampler"]["kind"] == "ddim"
        except (KeyError, TypeError, ValueError) as exc:
            raise PrefkitError(
                f"{where}: no valid sampler.latent_shape/latent_dtype, settings.height/width, files or "
                f"model.family ({type(exc).__name__}: {exc}); is this a manifest written by `prefkit generate`?"
            ) from None
        latent_bytes = math.prod(shape) * latent.itemsize
        if len(shape) != 4 or min(shape) < 1 or shape[0] < 2 or latent_bytes > MAX_LATENT_BYTES:
            raise PrefkitError(
                f"{where}: sampler.latent_shape {list(shape)} is not a latent chain [K+1, C, h, w]"
            )
        if not (0 < height * width <= MAX_PNG_BYTES // 4):
            raise PrefkitError(f"{where}: settings.height x width {height} x {width} is not an image size")
        steps = shape[0] - 1
        arrays = {
            "latents.npy": (latent.name, shape),
            "timesteps.npy": ("int64" if ddim else "float32", (steps,)),
            "sigmas.npy": ("float32", (steps + 1,)),
            "logprobs.npy": ("float32", (steps,)),
        }
        max_bytes = {f: math.prod(s) * np.dtype(d).itemsize + NPY_HEADER_MAX for f, (d, s) in arrays.items()}
        max_bytes |= {"json": MAX_JSON_BYTES, "png": 4 * height * width + 65536}
        unknown = sorted(set(files) - max_bytes.keys())
        if unknown:
            raise PrefkitError(f"{where}: files lists {unknown}, which are not prefkit sample files")
        return cls(files, max_bytes, arrays, (width, height))


def shard_spec(folder: Path) -> ShardSpec:
    """The ShardSpec of a dataset folder (or a published folder's ``trajectories/``) from its manifest."""
    return ShardSpec.from_manifest(read_manifest(folder), Path(folder) / MANIFEST)


def open_shard(path: Path) -> tarfile.TarFile:
    """A shard opened as a plain tar (mode ``r:``): a compressed file is refused before anything is
    decompressed, whatever its name says."""
    from prefkit.errors import PrefkitError

    try:
        with open(path, "rb") as f:
            head = f.read(6)
        kind = next((name for magic, name in COMPRESSION_MAGIC.items() if head.startswith(magic)), None)
        if kind:
            raise PrefkitError(
                f"{path}: a {kind}-compressed file, not a plain tar; prefkit shards are uncompressed tar "
                "files (`prefkit generate` writes them): remove it or get the dataset again"
            )
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise PrefkitError(
            f"{path}: not a readable tar file ({exc}); remove it or get the dataset again"
        ) from None


def shard_members(
    tar: tarfile.TarFile, path: Path, spec: ShardSpec
) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """(key, field, member) of each member of an open shard, checked from its header alone: a regular
    file named ``KEY.FIELD``, FIELD one of the manifest's files, no larger than the manifest allows."""
    from prefkit.errors import PrefkitError

    try:
        for m in tar:
            key, _, field = m.name.partition(".")
            if not (m.isfile() and KEY.fullmatch(key) and field in spec.files):
                raise PrefkitError(
                    f"{path}: member {m.name!r} is not a sample file KEY.FIELD with FIELD one of "
                    f"{', '.join(spec.files)} (manifest.json); the shard is not from this dataset"
                )
            if m.size > spec.max_bytes[field]:
                raise PrefkitError(
                    f"{path}: member {m.name} is {m.size} bytes, more than the {spec.max_bytes[field]} its "
                    "manifest allows; the shard is damaged or not from this dataset (nothing of it was read)"
                )
            yield key, field, m
    except tarfile.TarError as exc:
        raise PrefkitError(
            f"{path}: a damaged tar file ({exc}); remove it or get the dataset again"
        ) from None


def read_shard(path: Path, spec: ShardSpec, fields: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples ``{"__key__": key, field: bytes}`` of one shard, in order, with the manifest's ``fields``
    (default: all). Each member is bounded before it is read (open_shard, shard_members), each array checked
    after (check_array: dtype, shape, no pickle), and every sample must carry every field asked for."""
    from prefkit.errors import PrefkitError

    path = Path(path)
    wanted = [f for f in (spec.files if fields is None else fields) if f in spec.files]
    seen: set[str] = set()
    sample: dict[str, Any] = {}

    def finished() -> dict[str, Any]:
        missing = [f for f in wanted if f not in sample]
        if missing:
            raise PrefkitError(
                f"{path}: sample {sample['__key__']} has no {missing[0]} member; the shard is truncated or "
                "damaged: remove it or get the dataset again"
            )
        return sample

    with open_shard(path) as tar:
        for key, field, member in shard_members(tar, path, spec):
            if key != sample.get("__key__"):
                if sample:
                    yield finished()
                if key in seen:
                    raise PrefkitError(f"{path}: sample {key} appears twice; the shard is damaged")
                seen.add(key)
                sample = {"__key__": key, "__url__": str(path)}
            if field in wanted:
                try:
                    data = tar.extractfile(member).read()
                except tarfile.TarError as exc:
                    raise PrefkitError(f"{path}: {member.name}: {exc}; the shard is truncated") from None
                if field in spec.arrays:
                    check_array(data, spec, field, f"{path}: {member.name}")
                sample[field] = data
        if sample:
            yield finished()


def check_array(data: bytes, spec: ShardSpec, field: str, where: str) -> None:
    """Refuse a ``.npy`` member whose dtype or shape is not the manifest's, that holds Python objects (a
    pickle: never loaded) or is cut short; only the header is parsed."""
    from prefkit.errors import PrefkitError

    dtype_name, shape = spec.arrays[field]
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        got_shape, _, got_dtype = read_header(f)
    except (ValueError, TypeError, SyntaxError) as exc:
        raise PrefkitError(f"{where}: not a .npy array ({exc}); the shard is damaged") from None
    if got_dtype.hasobject:
        problem = "holds Python objects (a pickle, which prefkit never loads)"
    elif got_dtype != np.dtype(dtype_name) or tuple(got_shape) != shape:
        problem = f"is {got_dtype} {list(got_shape)}"
    elif len(data) - f.tell() != math.prod(shape) * got_dtype.itemsize:
        problem = f"is cut short ({len(data) - f.tell()} data bytes)"
    else:
        return
    raise PrefkitError(
        f"{where} {problem}, but the manifest says {dtype_name} {list(shape)}; the shard does not match "
        "its dataset: regenerate it or get the dataset again"
    )


def load_array(data: bytes, spec: ShardSpec, field: str, where: str) -> np.ndarray:
    """A ``.npy`` field checked against the manifest (check_array), then loaded without pickle."""
    check_array(data, spec, field, where)
    return npy_load(data)


def load_png(data: bytes, spec: ShardSpec, where: str):
    """The RGB image of a ``png`` field; its size is checked before a pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    from prefkit.errors import PrefkitError

    try:
        with warnings.catch_warnings():  # the size is checked here, below PIL's own bomb limit too
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        if image.size != spec.image_size:
            raise PrefkitError(
                f"{where}: a {image.size[0]} x {image.size[1]} image, but the manifest says "
                f"{spec.image_size[0]} x {spec.image_size[1]}; the shard does not match its dataset"
            )
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise PrefkitError(f"{where}: not a readable PNG ({exc}); the shard is damaged") from None


def decode_sample(raw: dict[str, Any], spec: ShardSpec, where: str = "") -> dict[str, Any]:
    """Raw sample (bytes per file, from read_shard) -> numpy arrays, PIL image and dict. No pickle."""
    out: dict[str, Any] = {"__key__": raw["__key__"]}
    prefix = f"{where}: {raw['__key__']}"
    for name, value in raw.items():
        if name.startswith("__"):
            continue
        if name.endswith(".npy"):
            out[name[: -len(".npy")]] = load_array(value, spec, name, f"{prefix}.{name}")
        elif name == "png":
            out["image"] = load_png(value, spec, f"{prefix}.png")
        elif name == "json":
            out["record"] = json.loads(value)
    return out


def iter_samples(
    folder_or_shards, decode: bool = True, fields: Iterable[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Stream samples of a dataset folder (or a list of its shard paths), in order, with read_shard: every
    member checked against the manifest of the shard's folder. ``fields``: only these (default: all)."""
    if isinstance(folder_or_shards, (str, Path)):
        shards = finished_shards(Path(folder_or_shards))
    else:
        shards = [Path(s) for s in folder_or_shards]
    from prefkit.fileio import reading

    specs: dict[Path, ShardSpec] = {}
    for shard in shards:
        if shard.parent not in specs:
            specs[shard.parent] = shard_spec(shard.parent)
        spec = specs[shard.parent]
        with reading(shard):  # what the checks above do not catch (a json that is no record): one line
            for raw in read_shard(shard, spec, fields):
                yield decode_sample(raw, spec, str(shard)) if decode else raw


def read_manifest(folder: Path) -> dict[str, Any]:
    from prefkit.errors import PrefkitError
    from prefkit.fileio import parse_json

    path = Path(folder) / MANIFEST
    try:
        manifest = parse_json(path.read_bytes(), str(path), whole_file=True)
    except FileNotFoundError:
        raise PrefkitError(f"{path}: no manifest; is this a folder written by `prefkit generate`?") from None
    except OSError as exc:
        raise PrefkitError(f"{path}: cannot read the manifest ({exc}); get the dataset again") from None
    if not isinstance(manifest, dict):
        raise PrefkitError(
            f"{path}: a manifest is a JSON object, not a {type(manifest).__name__}; "
            "this folder was not written by `prefkit generate` (or the file is damaged)"
        )
    return manifest
