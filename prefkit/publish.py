"""``prefkit publish``: a dataset and one label set as a Hugging Face Hub dataset repository; with ``--lora``
(and ``prefkit train --push-to-hub``) a trained LoRA as a model repository with a model card (the section
"a LoRA as a model repository" below; docs/formats.md section 11).

The Hub-ready folder is built locally (``--staging``, default ``DATASET/.publish``, rebuilt on every run)::

    README.md                                  dataset card: YAML front matter + body, rendered here
    data/train-00000-of-00001.parquet          config ``default``: Pick-a-Pic-compatible pairs
    data/validation-00000-of-00001.parquet     (absent with --val-fraction 0)
    trajectories/shard-000000.parquet ...      config ``trajectories``: the WebDataset shards, one row a sample
    trajectories/embeddings/*.safetensors      prompt embeddings, when the dataset stored them (hard links)
    trajectories/manifest.json                 generation settings, model, plan, counts
    labels/NAME.meta.json                      how the label set was made (source, judge, counts, agreement)

The pairs carry the images as raw JPEG bytes (quality 95, as Pick-a-Pic v2 stores them; binary columns,
not an Image feature), so Diffusion-DPO readers that do ``Image.open(io.BytesIO(row["jpg_0"]))`` work
unchanged. Splits are made by prompt: every pair of one prompt lands in the same split.

The trajectories are parquet too, one file per shard, every WebDataset field's bytes unchanged (npy, png,
json): ``datasets`` picks ONE builder for all configs of a repository, inferred from the first config's
files (huggingface/datasets#7101), so a parquet ``default`` config beside a tar ``trajectories`` config
fails to load the latter. Parquet for both keeps ``load_dataset(REPO, "trajectories")`` working.

Upload (docs/formats.md section 11): ``HfApi.create_repo(repo_type="dataset",
exist_ok=True)`` then one ``HfApi.upload_folder`` commit; files already on the Hub are not sent again, so
re-running resumes an interrupted upload, and stale data files of an earlier publish are deleted in the
same commit. No loading script, no ``DatasetCard.validate()``/``push_to_hub`` (they post to a fixed host).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.fileio import check_output_folder, reading, remove_quietly, writing
from prefkit.hub import REPO_ID, hub_offline

STAGING_DEFAULT = ".publish"
MARKER = ".prefkit-publish"  # marks a staging folder prefkit may wipe and rebuild; never uploaded
JPEG_QUALITY = 95
MAX_PARQUET_BYTES = 500_000_000  # image bytes per parquet file before a new one is started
ROWS_PER_GROUP = 64  # parquet row group size (rows): bounded memory while writing
# the card's `license:`, a Hub license identifier (apache-2.0, cc-by-4.0, other)
LICENSE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# remote files under these are replaced by this publish: removed in the upload commit unless re-uploaded
DELETE_PATTERNS = ["data/*", "trajectories/*", "labels/*"]
TAGS = ["preference", "dpo", "d3po", "diffusion", "prefkit"]
# what an upload error tells the user to do
AGAIN = "run the same command again to resume (files already on the Hub are not sent again)"


def pairs_schema():
    import pyarrow as pa

    vote = pa.struct(
        [
            ("annotator", pa.string()),
            ("choice", pa.string()),
            ("lead_time_s", pa.float64()),
            ("created_at", pa.string()),
        ]
    )
    return pa.schema(
        [
            ("caption", pa.string()),
            ("jpg_0", pa.binary()),
            ("jpg_1", pa.binary()),
            ("label_0", pa.float64()),
            ("label_1", pa.float64()),
            ("pair_id", pa.string()),
            ("group_id", pa.int64()),
            ("key_0", pa.string()),
            ("key_1", pa.string()),
            ("source", pa.string()),
            ("has_label", pa.bool_()),
            ("is_tie", pa.bool_()),
            ("votes", pa.list_(vote)),
            ("agreement", pa.float64()),
            ("judge", pa.string()),
            ("split", pa.string()),
            ("created_at", pa.string()),
        ]
    )


FIELDS = [
    ("caption", "string", "The prompt the two images were sampled from."),
    ("jpg_0", "binary", "Image of sample key_0: raw JPEG bytes (quality 95), `Image.open(io.BytesIO(...))`."),
    ("jpg_1", "binary", "Image of sample key_1, as jpg_0."),
    ("label_0", "float64", "1 = image 0 preferred, 0 = image 1 preferred, 0.5 = tie (or no verdict)."),
    ("label_1", "float64", "1 - label_0."),
    ("pair_id", "string", "`key_0__key_1`."),
    ("group_id", "int64", "Prompt group (one prompt) the pair was formed in."),
    ("key_0", "string", "Sample key `g{group:08d}_s{index:02d}` of image 0 in the `trajectories` config."),
    ("key_1", "string", "Sample key of image 1 (key_0 < key_1)."),
    ("source", "string", "human, ai or rule."),
    ("has_label", "bool", "False when the pair has no verdict (label 0.5/0.5 then means unknown)."),
    ("is_tie", "bool", "A judged tie (label 0.5/0.5); Diffusion-DPO readers drop these."),
    ("votes", "list of {annotator, choice, lead_time_s, created_at}", "Every vote (human labels)."),
    ("agreement", "float64 or null", "Share of agreeing vote pairs on this pair (2+ votes)."),
    ("judge", "string (JSON) or null", "The judge: name, model, revision, method, template, scores."),
    ("split", "string", "train or validation (by prompt)."),
    ("created_at", "string", "When the label was made (UTC)."),
]


# -- entry point ------------------------------------------------------------------------------------------


def run_publish(cfg, api=None, again: str | None = None) -> dict[str, Any]:
    """Build the folder for ``cfg`` (a PublishConfig) and upload it unless ``cfg.dry_run``.

    ``cfg.lora``: the LoRA of a training run as a model repository instead (``run_publish_lora``; ``again``:
    how an upload error tells the user to retry).

    ``api``: an ``huggingface_hub.HfApi``-like object (default: ``HfApi()``); only ``create_repo`` and
    ``upload_folder`` are called. Returns a summary: kind ("dataset" or "model"), staging, repo_id, url,
    files [(path, bytes)], uploaded; a dataset's counts and splits, a LoRA's base model and notes.
    """
    if cfg.dataset and cfg.lora:
        raise PrefkitError(
            f"give either a DATASET folder ({cfg.dataset}) or --lora ({cfg.lora}), not both: a dataset is "
            "published as a dataset repository, a LoRA as a model repository"
        )
    if not cfg.dataset and not cfg.lora:
        raise PrefkitError(
            "publish: give the dataset folder (prefkit publish DATASET --repo-id OWNER/NAME), or a trained "
            "LoRA with --lora OUT"
        )
    check_repo_settings(cfg)
    if cfg.lora:
        return run_publish_lora(cfg, api, again)
    if cfg.base_model is not None:
        raise PrefkitError("--base-model names a LoRA's base model: it goes with --lora")
    if not 0 <= cfg.val_fraction < 1:
        raise PrefkitError(f"--val-fraction {cfg.val_fraction}: must be >= 0 and < 1")
    if not cfg.dry_run and api is None:
        check_hub_access()  # before the (long) build: no token, no point
    folder = Path(cfg.dataset)
    staging = Path(cfg.staging) if cfg.staging else folder / STAGING_DEFAULT
    try:
        with writing(staging):  # a full disk or read-only staging folder: one error naming it
            summary = build_folder(
                folder, staging, cfg.repo_id, cfg.labels, cfg.val_fraction, cfg.seed, cfg.license
            )
    except BaseException:
        for part in staging.rglob(".*.part"):  # parquet files being written when it failed
            remove_quietly(part)
        raise
    summary["kind"] = "dataset"
    summary["uploaded"] = False
    if not cfg.dry_run:
        summary["commit"] = upload(staging, cfg.repo_id, cfg.private, api)
        summary["uploaded"] = True
    return summary


def check_repo_settings(cfg) -> None:
    """--repo-id and --license, checked before anything is built."""
    card = "model card" if cfg.lora else "dataset card"
    if not cfg.repo_id:
        raise PrefkitError(
            f"--repo-id is required, also with --dry-run (the {card} and the Hub layout name it): "
            f"OWNER/NAME, e.g. --repo-id {'me/my-lora' if cfg.lora else 'me/my-preferences'}"
        )
    if not REPO_ID.fullmatch(cfg.repo_id):
        raise PrefkitError(f"--repo-id {cfg.repo_id!r}: expected OWNER/NAME (letters, digits, '-', '_', '.')")
    if not LICENSE_ID.fullmatch(cfg.license or ""):
        raise PrefkitError(
            f"--license {cfg.license!r}: expected a license identifier of the Hub, such as apache-2.0, "
            "cc-by-4.0 or other (letters, digits, '.', '+', '-', '_')"
        )


def check_hub_access(instead: str = "pass --dry-run to build and list the folder only") -> None:
    """A clear error, instead of a stack trace from deep inside huggingface_hub, when offline or logged out.
    ``instead``: what the user can do without the Hub."""
    import huggingface_hub

    if hub_offline(library=True):
        raise PrefkitError(
            "cannot upload: HF_HUB_OFFLINE is set, so huggingface_hub refuses every Hub call. Unset it "
            f"(`unset HF_HUB_OFFLINE`) to publish, or {instead}."
        )
    if huggingface_hub.get_token() is None:
        raise PrefkitError(
            "cannot upload: no Hugging Face token. Run `hf auth login` or set HF_TOKEN to a token with "
            f"write access, or {instead}."
        )


def upload(
    staging: Path,
    repo_id: str,
    private: bool,
    api=None,
    repo_type: str = "dataset",
    delete_patterns: list[str] | None = None,
    again: str = AGAIN,
) -> str | None:
    """create_repo (``repo_type``, exist_ok) then one upload_folder commit of ``staging``; remote files
    matching ``delete_patterns`` (default: a dataset's DELETE_PATTERNS) and not uploaded again are deleted
    in it. Returns the commit URL. ``again``: how the error message tells the user to retry."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type=repo_type,
            folder_path=str(staging),
            commit_message="prefkit publish",
            ignore_patterns=[MARKER],
            delete_patterns=DELETE_PATTERNS if delete_patterns is None else delete_patterns,
        )
    except PrefkitError:
        raise
    except Exception as exc:  # the network boundary: HTTP, auth, offline mode, connection errors
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = (
            " The Hub refused the token: check that HF_TOKEN (or `hf auth login`) is a token with write "
            f"access to {repo_id.split('/')[0]}."
            if status == 401
            else ""
        )
        raise PrefkitError(
            f"upload to {repo_id} failed ({type(exc).__name__}: {exc}).{hint} The folder is built in "
            f"{staging}; {again}."
        ) from None
    return getattr(info, "commit_url", None) if info is not None else None


# -- the folder ------------------------------------------------------------------------------------------


def build_folder(
    folder: Path,
    staging: Path,
    repo_id: str,
    labels: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    license: str = "other",  # noqa: A002 - the card's key
    max_parquet_bytes: int = MAX_PARQUET_BYTES,
) -> dict[str, Any]:
    """Write the Hub-ready folder for ``folder`` and label set ``labels`` into ``staging`` (wiped first)."""
    from prefkit.label_sets import label_paths, label_sets, read_meta, read_pairs
    from prefkit.shards import MANIFEST, finished_shards, read_manifest, shard_spec

    folder = Path(folder)
    root = folder.resolve()
    _inside(folder / MANIFEST, root)
    manifest = read_manifest(folder)
    spec = shard_spec(folder)
    shards = [_inside(s, root) for s in finished_shards(folder)]
    if not shards:
        raise PrefkitError(f"{folder}: no finished shards to publish")
    sets = label_sets(folder)
    if labels is None:
        if len(sets) != 1:
            raise PrefkitError(
                f"{folder}: {'no label set' if not sets else 'several label sets: ' + ', '.join(sets)}; "
                + ("label it first with `prefkit label`" if not sets else "choose one with --labels NAME")
            )
        labels = sets[0]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", labels):
        raise PrefkitError(f"--labels {labels!r}: a label set name is letters, digits, '-' and '_'")
    for path in label_paths(folder, labels).values():
        if path.exists() or path.is_symlink():
            _inside(path, root)
    pairs = read_pairs(folder, labels)
    meta = read_meta(folder, labels)
    if not pairs:
        raise PrefkitError(f"{folder}: label set {labels!r} has no pairs to publish")

    emb = folder / "embeddings"
    embeddings = []
    if emb.is_dir() or emb.is_symlink():
        embeddings = [_inside(f, root) for f in sorted(_inside(emb, root).glob("*.safetensors"))]

    split_of = assign_splits(pairs, val_fraction, seed)
    _prepare_staging(staging, folder)
    try:  # a refused input (a shard that does not match its manifest) leaves no half-built folder behind
        for sub in ("data", "trajectories", "labels"):
            (staging / sub).mkdir()
        counts, n_samples = _write_parquet(shards, spec, pairs, split_of, staging, max_parquet_bytes)
        _link(folder / MANIFEST, staging / "trajectories" / MANIFEST)
        if embeddings:
            (staging / "trajectories" / "embeddings").mkdir()
        for f in embeddings:
            _link(f, staging / "trajectories" / "embeddings" / f.name)
        (staging / "labels" / f"{labels}.meta.json").write_text(
            json.dumps(_public_meta(meta), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        splits = sorted(counts, key=lambda s: (s != "train", s))
        card = render_card(repo_id, manifest, meta, counts, splits, val_fraction, seed, license, labels)
        (staging / "README.md").write_text(card, encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = staged_files(staging)
    return {
        "staging": str(staging),
        "repo_id": repo_id,
        "url": _repo_url(repo_id),
        "labels": labels,
        "files": files,
        "splits": counts,
        "pairs": len(pairs),
        "samples": n_samples,
    }


def assign_splits(pairs: list[dict[str, Any]], val_fraction: float, seed: int) -> dict[str, str]:
    """caption -> "train" | "validation". The unit is the prompt (one or more prompt groups): shuffled with
    ``random.Random(seed)`` from sorted order, the first round(fraction x prompts) go to validation (at least
    one when the fraction is > 0 and there are 2+ prompts; train always keeps one)."""
    captions = sorted({p["caption"] for p in pairs})
    order = list(captions)
    random.Random(seed).shuffle(order)
    n_val = 0
    if val_fraction > 0 and len(order) >= 2:
        n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    val = set(order[:n_val])
    return {c: ("validation" if c in val else "train") for c in captions}


def _prepare_staging(staging: Path, dataset: Path, kind: str = "dataset folder") -> None:
    """Empty ``staging`` for a rebuild: it must be absent, empty, or a folder prefkit built (marker file)."""
    staging = Path(staging)
    if staging.resolve() == Path(dataset).resolve():
        raise PrefkitError(f"--staging {staging}: cannot be the {kind} itself")
    check_output_folder(
        staging,
        flag="--staging",
        allow=(staging / MARKER).is_file(),
        hint="it was not made by `prefkit publish`, so it is not wiped: give an empty or new folder",
    )
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / MARKER).write_text(
        "built by `prefkit publish`; this folder is wiped and rebuilt on each run\n"
    )


def _inside(path: Path, root: Path, kind: str = "dataset folder") -> Path:
    """``path`` itself, after checking that it is no symbolic link and lies inside the ``kind`` ``root``
    (resolved): publish never reads or stages a file from elsewhere."""
    if path.is_symlink():
        raise PrefkitError(
            f"{path}: a symbolic link; publish stages only the {kind}'s own files: replace the link "
            "by the file itself"
        )
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise PrefkitError(
            f"{path}: lies outside the {kind} {root} (it resolves to {resolved}); publish stages only "
            f"the {kind}'s own files"
        )
    return path


def _public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The label set's meta as published: input files by name only, no local absolute paths."""
    if isinstance(meta.get("inputs"), list):
        return {**meta, "inputs": [_public_name(p) for p in meta["inputs"]]}
    return meta


def _public_name(value: Any) -> Any:
    """A local absolute path (``/...``, ``~...``, ``C:\\...``) by its last component; anything else unchanged."""
    if isinstance(value, str) and (value.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:[\\/]", value)):
        return re.split(r"[\\/]", value.rstrip("/\\"))[-1] or value
    return value


def _link(src: Path, dst: Path) -> None:
    """Hard link (no copy of large shards) where the file system allows it, else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _repo_url(repo_id: str, repo_type: str = "dataset") -> str:
    from huggingface_hub import constants

    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{constants.ENDPOINT.rstrip('/')}/{prefix}{repo_id}"


# -- pairs to parquet ------------------------------------------------------------------------------------


def _shard_samples(shard: Path, spec) -> dict[str, dict[str, bytes]]:
    """key -> {field: bytes} of every sample of a shard (prefkit.shards.read_shard: each member bounded by the
    manifest before it is read, each array's dtype and shape checked; nothing decoded)."""
    from prefkit.shards import read_shard

    return {raw.pop("__key__"): raw for raw in read_shard(shard, spec)}


def trajectories_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("group_id", pa.int64()),
            ("sample_index", pa.int64()),
            ("prompt", pa.string()),
            ("json", pa.string()),
            ("png", pa.binary()),
            ("latents", pa.binary()),
            ("timesteps", pa.binary()),
            ("sigmas", pa.binary()),
            ("logprobs", pa.binary()),
        ]
    )


TRAJECTORY_FIELDS = {  # parquet column -> WebDataset field of the shard (the member's bytes, unchanged)
    "json": "json",
    "png": "png",
    "latents": "latents.npy",
    "timesteps": "timesteps.npy",
    "sigmas": "sigmas.npy",
    "logprobs": "logprobs.npy",
}


def _write_trajectories(shard: Path, samples: dict[str, dict[str, bytes]], out: Path) -> int:
    """One parquet file per shard, one row per sample, every field's bytes unchanged (lossless: the shard
    can be rebuilt from it); row groups of about 64 MB so that huge latent chains stay bounded in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = trajectories_schema()
    part = out / f".{shard.stem}.parquet.part"
    rows: list[dict[str, Any]] = []
    size = 0
    with writing(out / f"{shard.stem}.parquet"), pq.ParquetWriter(part, schema) as writer:
        for key in sorted(samples):
            fields = samples[key]
            rec = json.loads(fields["json"])
            row: dict[str, Any] = {
                "key": key,
                "group_id": rec["group_id"],
                "sample_index": rec.get("sample_index"),
                "prompt": rec.get("prompt"),
            }
            for column, name in TRAJECTORY_FIELDS.items():
                value = fields.get(name)
                row[column] = value.decode("utf-8") if column == "json" and value is not None else value
            rows.append(row)
            size += sum(len(v) for v in fields.values())
            if size > 64_000_000 or len(rows) >= ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows, size = [], 0
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    part.rename(out / f"{shard.stem}.parquet")
    return len(samples)


def jpeg_bytes(image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class _SplitWriter:
    """Parquet files ``{split}-NNNNN-of-MMMMM.parquet``: a new file is started when the next row group would
    take the current one past ``max_bytes`` of image bytes (a file always holds at least one row group)."""

    def __init__(self, out: Path, split: str, max_bytes: int):
        self.out, self.split, self.max_bytes = out, split, max_bytes
        self.parts: list[Path] = []
        self.writer = None
        self.bytes = 0  # image bytes in the open file
        self.rows: list[dict[str, Any]] = []
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        size = sum(len(r["jpg_0"]) + len(r["jpg_1"]) for r in self.rows)
        if self.writer is not None and self.bytes + size > self.max_bytes:
            self.writer.close()
            self.writer = None
        if self.writer is None:
            path = self.out / f".{self.split}-{len(self.parts):05d}.parquet.part"
            self.parts.append(path)
            self.writer = pq.ParquetWriter(path, pairs_schema())
            self.bytes = 0
        self.writer.write_table(pa.Table.from_pylist(self.rows, schema=pairs_schema()))
        self.bytes += size
        self.rows = []

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
        n = len(self.parts)
        for i, part in enumerate(self.parts):
            part.rename(self.out / f"{self.split}-{i:05d}-of-{n:05d}.parquet")


def _write_parquet(
    shards: list[Path],
    spec,
    pairs: list[dict[str, Any]],
    split_of: dict[str, str],
    staging: Path,
    max_bytes: int,
) -> tuple[dict[str, dict[str, int]], int]:
    """Shard by shard (a shard holds whole prompt groups, pairs never cross groups), each shard read once:
    its trajectories to ``trajectories/``, its pairs (JPEG images) to ``data/``. Memory is bounded by one
    shard. Returns ({split: {pairs, prompts, ties}}, samples)."""
    from prefkit.shards import load_png

    by_group: dict[int, list[dict[str, Any]]] = {}
    for p in pairs:
        by_group.setdefault(int(p["group_id"]), []).append(p)
    writers = {s: _SplitWriter(staging / "data", s, max_bytes) for s in sorted(set(split_of.values()))}
    done: set[int] = set()
    n_samples = 0
    for shard in shards:
        with reading(shard):
            samples = _shard_samples(shard, spec)
            n_samples += _write_trajectories(shard, samples, staging / "trajectories")
            groups = {key: json.loads(f["json"])["group_id"] for key, f in samples.items()}
            images = {
                key: jpeg_bytes(load_png(samples[key]["png"], spec, f"{shard}: {key}.png"))
                for key, g in groups.items()
                if g in by_group
            }
        del samples
        for group in sorted(set(groups.values()) & by_group.keys()):
            for p in by_group[group]:
                for k in (p["key_0"], p["key_1"]):
                    if k not in images:
                        raise PrefkitError(
                            f"label pair {p['pair_id']}: sample {k!r} is not in shard {shard.name} with "
                            f"its group {group}; the label set does not match this dataset"
                        )
                writers[split_of[p["caption"]]].add(_row(p, images, split_of[p["caption"]]))
            done.add(group)
    missing = sorted(by_group.keys() - done)
    if missing:
        raise PrefkitError(
            f"label pairs of prompt group(s) {missing[:5]} have no samples in the dataset's shards; "
            "the label set does not match this dataset"
        )
    counts: dict[str, dict[str, int]] = {}
    for split, w in writers.items():
        w.close()
        ps = [p for p in pairs if split_of[p["caption"]] == split]
        counts[split] = {
            "pairs": w.count,
            "prompts": len({p["caption"] for p in ps}),
            "ties": sum(bool(p.get("is_tie")) for p in ps),
        }
    return counts, n_samples


def _row(p: dict[str, Any], images: dict[str, bytes], split: str) -> dict[str, Any]:
    votes = [
        {
            "annotator": v.get("annotator"),
            "choice": v.get("choice"),
            "lead_time_s": v.get("lead_time_s"),
            "created_at": v.get("created_at"),
        }
        for v in p.get("votes") or []
    ]
    judge = p.get("judge")
    return {
        "caption": p["caption"],
        "jpg_0": images[p["key_0"]],
        "jpg_1": images[p["key_1"]],
        "label_0": float(p["label_0"]),
        "label_1": float(p["label_1"]),
        "pair_id": p["pair_id"],
        "group_id": int(p["group_id"]),
        "key_0": p["key_0"],
        "key_1": p["key_1"],
        "source": p["source"],
        "has_label": bool(p["has_label"]),
        "is_tie": bool(p["is_tie"]),
        "votes": votes,
        "agreement": p.get("agreement"),
        "judge": json.dumps(judge, sort_keys=True) if judge is not None else None,
        "split": split,
        "created_at": p.get("created_at"),
    }


# -- the card --------------------------------------------------------------------------------------------


def size_category(n: int) -> str:
    """The Hub's size_categories bucket of ``n`` rows."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
    ]
    return next((name for bound, name in bounds if n < bound), "n>1T" if n >= 10**12 else "1B<n<10B")


def front_matter(
    repo_id: str,
    meta: dict[str, Any],
    n_pairs: int,
    splits: list[str],
    license: str,  # noqa: A002
) -> dict[str, Any]:
    kind = meta.get("kind") or ("human" if meta.get("source") == "human" else "ai")
    return {
        "license": license,
        "pretty_name": repo_id.split("/", 1)[1],
        "task_categories": ["text-to-image"],
        "tags": list(TAGS),
        "size_categories": [size_category(n_pairs)],
        "annotations_creators": ["crowdsourced" if kind == "human" else "machine-generated"],
        "configs": [
            {
                "config_name": "default",
                "default": True,
                "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits],
            },
            {
                "config_name": "trajectories",
                "data_files": [{"split": "train", "path": "trajectories/shard-*.parquet"}],
            },
        ],
    }


# markdown that could start a link, image, code span, emphasis, heading or table cell (with "[" escaped, "(" and
# "!" cannot make a link or an image), and the HTML characters of text (no attribute is ever written)
MD_SPECIAL = set("\\`*_[]#|~")
HTML_SPECIAL = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def md_text(value: Any) -> str:
    """``value`` as literal text of a markdown line (a table cell): HTML characters as entities, markdown
    punctuation backslash-escaped, newlines as spaces. Everything user-controlled in the card goes through
    this, so no tag, link, image or table break in a model id, prompt or license reaches the page."""
    out = []
    for c in str(value):
        if c in HTML_SPECIAL:
            out.append(HTML_SPECIAL[c])
        elif c in MD_SPECIAL:
            out.append("\\" + c)
        else:
            out.append(" " if c in "\r\n" else c)
    return "".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(md_text(v) for v in value) or "-"
    if isinstance(value, (list, dict)):
        return md_text(json.dumps(value, ensure_ascii=False))
    return md_text(value)


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_card(
    repo_id: str,
    manifest: dict[str, Any],
    meta: dict[str, Any],
    counts: dict[str, dict[str, int]],
    splits: list[str],
    val_fraction: float,
    seed: int,
    license: str,  # noqa: A002
    labels: str,
) -> str:
    """README.md: YAML front matter (the Hub reads configs and metadata from it) and a markdown body."""
    import yaml

    n_pairs = sum(c["pairs"] for c in counts.values())
    fm = yaml.safe_dump(
        front_matter(repo_id, meta, n_pairs, splits, license), sort_keys=False, allow_unicode=True
    )
    settings = manifest.get("settings", {})
    model = manifest.get("model", {})
    sampler = manifest.get("sampler", {})
    mcounts = manifest.get("counts") or {}
    gen_rows = [
        ("model", _public_name(model.get("id"))),
        ("model revision", model.get("revision")),
        ("family / pipeline", f"{model.get('family')} / {model.get('pipeline_class')}"),
        ("scheduler", model.get("scheduler")),
        ("sampler", sampler.get("kind")),
        ("steps", settings.get("steps")),
        ("guidance", settings.get("guidance")),
        ("negative prompt", repr(settings.get("negative_prompt", ""))),
        ("eta (DDIM)", settings.get("eta")),
        ("noise level (flow SDE)", settings.get("noise_level")),
        ("size (h x w)", f"{settings.get('height')} x {settings.get('width')}"),
        ("samples per prompt", settings.get("samples_per_prompt")),
        ("seed / same noise", f"{settings.get('seed')} / {settings.get('same_noise')}"),
        ("model dtype / latent dtype", f"{settings.get('dtype')} / {sampler.get('latent_dtype')}"),
        ("log-prob reduction", sampler.get("lp_reduction")),
        (
            "prompt groups / samples / shards",
            f"{mcounts.get('groups')} / {mcounts.get('samples')} / {mcounts.get('shards')}",
        ),
        ("prefkit version", manifest.get("prefkit_version")),
    ]
    kind = meta.get("kind") or "-"
    judge = meta.get("judge") or {}
    mc = meta.get("counts", {})
    ag = meta.get("agreement", {})
    label_rows = [
        ("label set", labels),
        ("source / kind", f"{meta.get('source')} / {kind}"),
        ("pairs formed", meta.get("pairs_policy") or "as given by the annotators"),
        ("tie margin", meta.get("tie_margin")),
        (
            "pairs / decided / ties / without verdict",
            f"{mc.get('pairs')} / {mc.get('decided')} / {mc.get('ties')} / {mc.get('unlabelled')}",
        ),
        ("votes / annotators", f"{mc.get('votes')} / {ag.get('annotators')}"),
        ("percent agreement", ag.get("percent_agreement")),
        ("Krippendorff's alpha (nominal)", ag.get("krippendorff_alpha")),
    ]
    if kind == "human":
        label_rows += [
            ("import format", meta.get("format")),
            ("input files", _public_meta(meta).get("inputs")),
        ]
    if judge:
        label_rows += [
            ("judge", judge.get("name")),
            ("judge model", judge.get("model")),
            ("judge revision", judge.get("revision")),
            ("judge method", judge.get("method")),
            ("judge template", judge.get("template")),
        ]
        extra = {
            k: v for k, v in judge.items() if k not in ("name", "model", "revision", "method", "template")
        }
        if extra:
            label_rows.append(("judge settings", extra))
    if judge.get("method") == "pairwise":
        order = "each pair asked in both orders; only verdicts that agree in both orders are kept"
    elif judge:
        order = "pointwise: each image scored alone, so there is no order to swap"
    else:
        order = "as recorded by the annotation tool (see the votes)"
    split_rows = [(s, counts[s]["prompts"], counts[s]["pairs"], counts[s]["ties"]) for s in splits]
    name = repo_id
    body = f"""
# {name.split("/", 1)[1]}

Preference pairs of images sampled from a text-to-image model, with the full denoising trajectories, made
with prefkit (`prefkit generate`, `prefkit label`, `prefkit publish`).

* `default` config: Pick-a-Pic v2 compatible pairs (`caption`, `jpg_0`, `jpg_1`, `label_0`, `label_1`) plus
  prefkit's fields, as parquet under `data/`.
* `trajectories` config: prefkit's trajectory shards as parquet under `trajectories/` (one file per
  WebDataset shard, one row per image, each field's bytes unchanged): `key`, `group_id`, `sample_index`,
  `prompt`, the metadata `json` (string), the image `png`, and as `.npy` bytes (`np.load(io.BytesIO(b))`)
  the latent chain `latents` (float16 [K+1, C, h, w]), `timesteps`, `sigmas` (flow models, else null) and
  the per-step log-probabilities `logprobs` (float32 [K]). `key_0` / `key_1` of a pair are `key` here.
  `trajectories/manifest.json` holds the full generation settings; `trajectories/embeddings/` the prompt
  embeddings when they were stored; `labels/{labels}.meta.json` how the labels were made.

License: {md_text(license)}. Images generated by a model are also subject to that model's license.

## Generation

{_table(gen_rows, ("setting", "value"))}

## Labelling protocol

{_table(label_rows, ("", "value"))}

Pairs are formed within a prompt group only. `label_0 = 1` means image 0 won, `0` image 1, `0.5 / 0.5` a
tie; soft labels (several annotators) lie in between and are the mean vote. Ties are kept (`is_tie`);
a pair without any verdict has `has_label = false`. Order policy: {order}.

## Splits

Split by prompt, so no prompt (and no prompt group) is in two splits: the prompts are shuffled with seed
{seed} and {val_fraction:g} of them form the validation split. The `trajectories` config is one `train`
split holding every sample; a sample's split is that of its prompt (`group_id`).

{_table(split_rows, ("split", "prompts", "pairs", "ties"))}

## Fields (`default` config)

{_table(FIELDS, ("field", "type", "meaning"))}

## Loading

```python
from datasets import load_dataset

pairs = load_dataset("{name}")                        # train / validation pairs
trajectories = load_dataset("{name}", "trajectories")  # latent chains, log-probs, images
```

A Diffusion-DPO style reader (images as JPEG bytes, ties dropped):

```python
import io

from datasets import load_dataset
from PIL import Image

ds = load_dataset("{name}", split="train")
ds = ds.filter(lambda row: row["label_0"] != 0.5)     # drop ties (and pairs without a verdict)
for row in ds:
    im_0 = Image.open(io.BytesIO(row["jpg_0"])).convert("RGB")
    im_1 = Image.open(io.BytesIO(row["jpg_1"])).convert("RGB")
    winner, loser = (im_0, im_1) if row["label_0"] > 0.5 else (im_1, im_0)
    caption = row["caption"]
```

Trajectories (the arrays are `.npy` bytes):

```python
import io

import numpy as np
from datasets import load_dataset

traj = load_dataset("{name}", "trajectories", split="train")
row = traj[0]
latents = np.load(io.BytesIO(row["latents"]))    # x_T ... x_0, float16 [K+1, C, h, w]
logprobs = np.load(io.BytesIO(row["logprobs"]))  # per-step log-probability, float32 [K]
```
"""
    return "---\n" + fm + "---\n" + body.lstrip("\n")


# -- a LoRA as a model repository ------------------------------------------------------------------------

LORA_TAGS = ["lora", "text-to-image", "diffusers", "prefkit"]
GRID_IN_REPO = "images/eval-grid.png"  # the eval grid, when the run has a current eval report
# remote files a LoRA publish replaces: an eval grid of an earlier publish goes when this one has none
LORA_DELETE_PATTERNS = [GRID_IN_REPO]
DATASET_ONLY = ("labels", "val_fraction", "seed")  # PublishConfig fields a LoRA publish does not read
CARD_PROMPTS = 8  # eval prompts listed in the card
RUN_FOLDER, LORA_FOLDER = "training run folder", "LoRA folder"


def run_publish_lora(cfg, api=None, again: str | None = None) -> dict[str, Any]:
    """``prefkit publish --lora``: build the model repository folder of the LoRA ``cfg.lora`` (a training run
    folder OUT, OUT/lora or OUT/checkpoint-N) and upload it unless ``cfg.dry_run``. ``again``: how an upload
    error tells the user to retry (``prefkit train --push-to-hub`` names this command)."""
    from prefkit.config import PublishConfig

    defaults = PublishConfig()
    given = [f"--{k.replace('_', '-')}" for k in DATASET_ONLY if getattr(cfg, k) != getattr(defaults, k)]
    if given:
        raise PrefkitError(f"{', '.join(given)}: a dataset's setting; --lora publishes a LoRA, leave it out")
    if cfg.base_model is not None and not REPO_ID.fullmatch(cfg.base_model):
        raise PrefkitError(
            f"--base-model {cfg.base_model!r}: expected the base model's Hub id OWNER/NAME, e.g. "
            "stable-diffusion-v1-5/stable-diffusion-v1-5"
        )
    if not cfg.dry_run and api is None:
        check_hub_access()
    lora, run = locate_lora(cfg.lora)
    staging = Path(cfg.staging).expanduser() if cfg.staging else (run or lora) / STAGING_DEFAULT
    with writing(staging):
        summary = build_lora_folder(lora, run, staging, cfg.repo_id, cfg.license, cfg.base_model)
    summary["uploaded"] = False
    if not cfg.dry_run:
        summary["commit"] = upload(
            staging,
            cfg.repo_id,
            cfg.private,
            api,
            repo_type="model",
            delete_patterns=LORA_DELETE_PATTERNS,
            again=again or AGAIN,
        )
        summary["uploaded"] = True
    return summary


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def locate_lora(spec: str) -> tuple[Path, Path | None]:
    """(the LoRA folder, the training run folder holding it or None), both resolved, from --lora: OUT,
    OUT/lora or OUT/checkpoint-N (or any folder holding a diffusers LoRA file). Nothing is read before the
    containment checks: the LoRA file and the run's files are no symbolic links and lie in their folder."""
    from prefkit.runs import LORA_WEIGHTS

    given = Path(spec).expanduser()
    if not given.is_dir():
        raise PrefkitError(f"--lora {spec}: no such folder")
    if not _present(given / LORA_WEIGHTS) and _present(given / "lora"):
        _inside(given / "lora", given.resolve(), RUN_FOLDER)  # OUT/lora of the run folder OUT
        given = given / "lora"
    lora = given.resolve()
    weights = lora / LORA_WEIGHTS
    if _present(weights):
        _inside(weights, lora, LORA_FOLDER)
    if not weights.is_file():
        raise PrefkitError(
            f"--lora {spec}: no {LORA_WEIGHTS} in that folder (nor in its lora/); give the folder that "
            "prefkit train wrote: OUT, OUT/lora or a checkpoint OUT/checkpoint-N"
        )
    run = lora.parent
    if not _present(run / "config.yaml"):
        return lora, None
    _inside(run / "config.yaml", run, RUN_FOLDER)
    return lora, run


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _read_json(path: Path, root: Path, kind: str) -> dict[str, Any]:
    """A JSON object file of the run (after the containment check); {} when absent or not an object."""
    from prefkit.fileio import parse_json

    if not _present(path):
        return {}
    _inside(path, root, kind)
    return _dict(parse_json(path.read_bytes(), str(path)))


def hub_model_id(model: Any, manifest: dict[str, Any]) -> str | None:
    """``model`` when it names a model on the Hub (OWNER/NAME, not a local folder here nor where the dataset
    was sampled), else None."""
    if not isinstance(model, str) or not REPO_ID.fullmatch(model):
        return None
    sampled = _dict(manifest.get("model"))
    if _dict(manifest.get("settings")).get("model") == model and sampled.get("path") is not None:
        return None  # a folder on the machine that sampled the dataset
    return None if Path(model).expanduser().exists() else model


def build_lora_folder(
    lora: Path,
    run: Path | None,
    staging: Path,
    repo_id: str,
    license: str = "other",  # noqa: A002 - the card's key
    base_model: str | None = None,
) -> dict[str, Any]:
    """Write the model repository folder of ``lora`` (from ``locate_lora``) into ``staging`` (wiped first):
    README.md (the model card), the LoRA file, and the eval grid when the run has a current eval report."""
    from prefkit.runs import LORA_WEIGHTS, SUMMARY_WINDOW, default_out, find_origin, recent_means

    root, kind = (run, RUN_FOLDER) if run else (lora, LORA_FOLDER)
    origin = find_origin(str(lora))
    train = origin.train or {}
    manifest = origin.manifest or {}
    notes = list(origin.notes)
    summary = _read_json(root / "summary.json", root, kind) if run else {}
    checkpoint = re.fullmatch(r"checkpoint-(\d+)", lora.name)
    step = int(checkpoint[1]) if checkpoint else _dict(summary.get("final")).get("step")
    recent = _dict(summary.get("recent")) if not checkpoint else {}
    metrics = root / "metrics.jsonl"
    if run and not recent and _present(metrics):
        _inside(metrics, root, kind)
        with reading(metrics, "metrics file"):
            recent = recent_means(metrics, SUMMARY_WINDOW, up_to=step if checkpoint else None)

    report, grid = {}, None
    if run:
        out = default_out(lora)
        if _present(out / "report.json"):
            _inside(out, root, kind)
            report = _read_json(out / "report.json", root, kind)
            evaluated = report.get("lora")
            if isinstance(evaluated, str) and Path(evaluated).name != lora.name:
                notes.append(
                    f"{out / 'report.json'} evaluates {evaluated}, not this LoRA: left out of the card"
                )
                report = {}
            elif (out / "report.json").stat().st_mtime < (lora / LORA_WEIGHTS).stat().st_mtime:
                notes.append(
                    f"{out / 'report.json'} is older than the LoRA (trained further since): left out of the "
                    "card; run `prefkit eval` again to include it"
                )
                report = {}
        if report and _present(out / "grid.png"):
            grid = _inside(out / "grid.png", root, kind)

    model = train.get("model") or _dict(manifest.get("settings")).get("model") or summary.get("model")
    base = base_model or hub_model_id(model, manifest)
    if base is None:
        notes.append(
            f"the base model {_public_name(model)!r} is not a Hub id: the card names it but has no "
            "base_model; give --base-model OWNER/NAME"
            if model
            else "the base model is unknown (no training run beside the LoRA): give --base-model OWNER/NAME"
        )

    _prepare_staging(staging, root, kind)
    try:
        _link(lora / LORA_WEIGHTS, staging / LORA_WEIGHTS)
        if grid is not None:
            (staging / GRID_IN_REPO).parent.mkdir(parents=True)
            _link(grid, staging / GRID_IN_REPO)
        card = render_model_card(
            repo_id,
            base,
            model,
            train,
            summary,
            manifest,
            recent,
            step,
            int(checkpoint[1]) if checkpoint else None,
            report,
            grid is not None,
            license,
        )
        (staging / "README.md").write_text(card, encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = staged_files(staging)
    return {
        "kind": "model",
        "staging": str(staging),
        "repo_id": repo_id,
        "url": _repo_url(repo_id, "model"),
        "files": files,
        "lora": str(lora),
        "base_model": base,
        "evaluated": bool(report),
        "notes": notes,
    }


def model_front_matter(base_model: str | None, objective: Any, license: str) -> dict[str, Any]:  # noqa: A002
    from prefkit.training.table import OBJECTIVES

    fm: dict[str, Any] = {}
    if base_model:
        fm["base_model"] = base_model
    fm["library_name"] = "diffusers"
    fm["license"] = license
    fm["pipeline_tag"] = "text-to-image"
    fm["tags"] = LORA_TAGS + ([objective] if isinstance(objective, str) and objective in OBJECTIVES else [])
    return fm


def _number(value: Any) -> Any:
    """A number of a run's files as it is, anything else as None (so that only numbers reach the code)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def render_model_card(
    repo_id: str,
    base_model: str | None,
    model: Any,
    train: dict[str, Any],
    summary: dict[str, Any],
    manifest: dict[str, Any],
    recent: dict[str, Any],
    step: Any,
    checkpoint: int | None,
    report: dict[str, Any],
    grid: bool,
    license: str,  # noqa: A002
) -> str:
    """The model card: YAML front matter (base_model, library_name, license, tags) and a body: how to load
    it, how it was trained, its last steps' metrics, and the eval report. Everything from the run's files
    goes through md_text (tables: _fmt); only OWNER/NAME ids and numbers reach the code blocks."""
    import yaml

    from prefkit.training.table import OBJECTIVES

    objective = train.get("objective")
    row = OBJECTIVES.get(objective) if isinstance(objective, str) else None
    fm = yaml.safe_dump(
        model_front_matter(base_model, objective, license), sort_keys=False, allow_unicode=True
    )
    settings = _dict(manifest.get("settings"))
    sampled = _dict(manifest.get("model"))
    labels = _dict(summary.get("labels"))
    name = repo_id.split("/", 1)[1]
    shown_model = _public_name(model) if model else None
    # a relative link: the Hub (or the mirror HF_ENDPOINT names) serves the base model's page at /OWNER/NAME
    base_text = f"[{md_text(base_model)}](/{base_model})" if base_model else md_text(shown_model or "a model")
    if row:
        what = f"with the **{md_text(row.name)}** objective ({md_text(row.summary)}; {md_text(row.paper)})"
        intro = f"A LoRA for {base_text} trained with prefkit (`prefkit train`) {what}."
    elif objective:
        intro = (
            f"A LoRA for {base_text} trained with prefkit (`prefkit train`), objective {md_text(objective)}."
        )
    else:
        intro = (
            f"A LoRA for {base_text}, published with prefkit. No prefkit training run was found beside it, "
            "so this card has no training details."
        )

    # how to load it: only ids and numbers go into the code
    call = ['prompt = "a photo of a cat"']
    args = []
    steps, guidance = _number(settings.get("steps")), _number(settings.get("guidance"))
    if steps is not None:
        args.append(f"num_inference_steps={steps}")
    if guidance is not None:
        args.append(f"guidance_scale={guidance}")
    height, width = _number(settings.get("height")), _number(settings.get("width"))
    if height is not None and width is not None:
        args += [f"height={height}", f"width={width}"]
    call.append(f"image = pipe(prompt{''.join(', ' + a for a in args)}).images[0]")
    load_base = (
        f'base_model = "{base_model}"'
        if base_model
        else 'base_model = "BASE_MODEL"  # the model the LoRA was trained on'
        + (" (see Training)" if train else "")
    )
    usage = f"""```python
import torch
from diffusers import DiffusionPipeline

{load_base}
pipe = DiffusionPipeline.from_pretrained(base_model, torch_dtype=torch.float16).to("cuda")
pipe.load_lora_weights("{repo_id}")
{chr(10).join(call)}
```"""
    if args:
        usage += (
            "\n\nThe sampler settings above are those the training images were sampled with "
            "(guidance, steps and size of `prefkit generate`); `pipe.disable_lora()` gives the base model back."
        )

    family = sampled.get("family")
    pipeline_class = sampled.get("pipeline_class")
    train_rows: list[tuple[Any, ...]] = [
        ("objective", objective),
        ("base model", shown_model),
        ("base model revision", sampled.get("revision") if model == settings.get("model") else None),
        ("family / pipeline", f"{family} / {pipeline_class}" if family or pipeline_class else None),
        ("dataset", _public_name(train.get("dataset"))),
        ("label set(s)", labels.get("label_sets") or train.get("labels")),
        ("pairs (ties dropped)", f"{labels.get('pairs')} ({labels.get('ties_skipped')})" if labels else None),
        (
            "optimizer steps",
            f"{step} (checkpoint of a run of {train.get('max_steps')})" if checkpoint is not None else step,
        ),
        ("learning rate / schedule", f"{train.get('lr')} / {train.get('lr_schedule')}" if train else None),
        (
            "batch size x grad accum",
            f"{train.get('batch_size')} x {train.get('grad_accum')}" if train else None,
        ),
        ("LoRA rank / alpha", f"{train.get('lora_rank')} / {train.get('lora_alpha')}" if train else None),
        ("LoRA targets", train.get("lora_targets") or ("default" if train else None)),
        ("mixed precision", train.get("mixed_precision")),
        ("seed", train.get("seed")),
        ("started from LoRA", _public_name(train.get("init_lora")) if train.get("init_lora") else None),
    ]
    if row:
        train_rows += [(f.name.replace("_", " "), train.get(f.name)) for f in row.flags]
    train_rows += [
        (
            "sampling guidance / steps",
            f"{settings.get('guidance')} / {settings.get('steps')}" if settings else None,
        ),
        ("sampling negative prompt", repr(settings.get("negative_prompt")) if settings else None),
        ("prefkit version", manifest.get("prefkit_version")),
    ]
    train_rows = [r for r in train_rows if r[1] not in (None, "", [])]

    sections = [f"# {md_text(name)}", intro, "## Use it", usage]
    if train_rows:
        sections += ["## Training", _table(train_rows, ("setting", "value"))]
    metric_rows = [
        (k, v)
        for k, v in recent.items()
        if k not in ("steps", "first_step", "last_step") and _number(v) is not None
    ]
    if metric_rows:
        window = f"steps {recent.get('first_step')}-{recent.get('last_step')}"
        sections += [
            "## Metrics",
            f"The mean of each training metric over the last {md_text(recent.get('steps'))} optimizer steps "
            f"({md_text(window)}), from `metrics.jsonl`. Accuracy is the share of pairs whose implicit reward "
            "ranks the preferred image higher.",
            _table(metric_rows, ("metric", "mean")),
        ]
    if report:
        sections += ["## Evaluation", *_eval_section(report, grid)]
    sections += [
        "## License",
        f"License: {md_text(license)}. A LoRA is also subject to its base model's license.",
    ]
    return "---\n" + fm + "---\n" + "\n\n".join(sections) + "\n"


def _eval_section(report: dict[str, Any], grid: bool) -> list[str]:
    """The eval report as card text: win rate with its interval, outcomes, judge, prompts, the grid."""
    s = _dict(report.get("summary"))
    wr = _dict(s.get("win_rate"))
    judge = _dict(report.get("judge"))
    settings = _dict(report.get("settings"))
    listed = report.get("prompts")
    prompts = [p for p in listed if isinstance(p, str)] if isinstance(listed, list) else []
    value, low, high = _number(wr.get("value")), _number(wr.get("low")), _number(wr.get("high"))
    interval = f" (95 % interval {low:.3f} to {high:.3f})" if low is not None and high is not None else ""
    text = (
        f"`prefkit eval` compared the base model and base + this LoRA on the same seeds: win rate "
        f"**{value:.3f}**{interval} over {md_text(s.get('pairs'))} pairs"
        if value is not None
        else "`prefkit eval` compared the base model and base + this LoRA on the same seeds"
    )
    rows: list[tuple[Any, ...]] = [
        ("wins / ties / losses", f"{s.get('wins')} / {s.get('ties')} / {s.get('losses')}"),
        ("no verdict", s.get("no_verdict")),
        ("judge", judge.get("source")),
        ("tie margin", judge.get("tie_margin")),
        ("samples per prompt", settings.get("samples_per_prompt")),
        ("seed", settings.get("seed")),
    ]
    diff = _dict(_dict(s.get("scores")).get("difference"))
    if _number(diff.get("mean")) is not None:
        rows.append(("mean score difference (tuned - base)", diff.get("mean")))
    shown = ", ".join(md_text(p) for p in prompts[:CARD_PROMPTS])
    more = f" and {len(prompts) - CARD_PROMPTS} more" if len(prompts) > CARD_PROMPTS else ""
    out = [
        text + ". A tie counts half a win; the interval is the sign test's.",
        _table(rows, ("", "value")),
        f"Prompts ({len(prompts)}): {shown}{more}." if prompts else "",
    ]
    if grid:
        out.append(f"![base and tuned samples, per prompt a row of base / tuned pairs]({GRID_IN_REPO})")
    return [o for o in out if o]


# -- the listing -----------------------------------------------------------------------------------------


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def print_listing(summary: dict[str, Any]) -> None:
    """A rich table of the files that are (or would be) uploaded, with sizes and the total."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    verb = "uploaded" if summary["uploaded"] else "would upload"
    kind = summary.get("kind", "dataset")
    table = Table(title=f"{verb} to {escape(summary['url'])} ({kind})", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("size", justify="right")
    for path, size in summary["files"]:
        table.add_row(escape(path), human_size(size))
    total = sum(s for _, s in summary["files"])
    table.add_row(f"[bold]{len(summary['files'])} files[/]", f"[bold]{human_size(total)}[/]")
    console = Console()
    console.print(table)
    if kind == "model":
        base = summary["base_model"] or "none (see the note)"
        console.print(
            f"LoRA {escape(summary['lora'])}; card base_model {escape(base)}; eval report "
            f"{'in the card' if summary['evaluated'] else 'none'}; folder {escape(summary['staging'])}",
            highlight=False,
            soft_wrap=True,
        )
        return
    splits = ", ".join(
        f"{s} {c['pairs']} pairs / {c['prompts']} prompts" for s, c in summary["splits"].items()
    )
    console.print(
        f"label set {escape(repr(summary['labels']))}: {splits}; folder {escape(summary['staging'])}",
        highlight=False,
        soft_wrap=True,
    )


def staged_files(staging: Path) -> list[tuple[str, int]]:
    """(path relative to the staging folder, bytes) of every file to upload, sorted (not the marker)."""
    return [
        (p.relative_to(staging).as_posix(), p.stat().st_size)
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != MARKER
    ]
