"""``prefkit publish``: a dataset and one label set as a Hugging Face Hub dataset repository.

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


def run_publish(cfg, api=None) -> dict[str, Any]:
    """Build the folder for ``cfg`` (a PublishConfig) and upload it unless ``cfg.dry_run``.

    ``api``: an ``huggingface_hub.HfApi``-like object (default: ``HfApi()``); only ``create_repo`` and
    ``upload_folder`` are called. Returns a summary: staging, repo_id, url, files [(path, bytes)], counts,
    splits, uploaded.
    """
    if not cfg.dataset:
        raise PrefkitError("publish: give the dataset folder")
    if not cfg.repo_id:
        raise PrefkitError(
            "--repo-id is required, also with --dry-run (the dataset card and the Hub layout name it): "
            "OWNER/NAME, e.g. --repo-id me/my-preferences"
        )
    if not REPO_ID.fullmatch(cfg.repo_id):
        raise PrefkitError(f"--repo-id {cfg.repo_id!r}: expected OWNER/NAME (letters, digits, '-', '_', '.')")
    if not LICENSE_ID.fullmatch(cfg.license or ""):
        raise PrefkitError(
            f"--license {cfg.license!r}: expected a license identifier of the Hub, such as apache-2.0, "
            "cc-by-4.0 or other (letters, digits, '.', '+', '-', '_')"
        )
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
    summary["uploaded"] = False
    if not cfg.dry_run:
        summary["commit"] = upload(staging, cfg.repo_id, cfg.private, api)
        summary["uploaded"] = True
    return summary


def check_hub_access() -> None:
    """A clear error, instead of a stack trace from deep inside huggingface_hub, when offline or logged out."""
    import huggingface_hub

    if hub_offline(library=True):
        raise PrefkitError(
            "cannot upload: HF_HUB_OFFLINE is set, so huggingface_hub refuses every Hub call. Unset it "
            "(`unset HF_HUB_OFFLINE`) to publish, or pass --dry-run to build and list the folder only."
        )
    if huggingface_hub.get_token() is None:
        raise PrefkitError(
            "cannot upload: no Hugging Face token. Run `hf auth login` or set HF_TOKEN to a token with "
            "write access, or pass --dry-run to build and list the folder only."
        )


def upload(staging: Path, repo_id: str, private: bool, api=None) -> str | None:
    """create_repo (dataset, exist_ok) then one upload_folder commit of ``staging``. Returns the commit URL."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(staging),
            commit_message="prefkit publish",
            ignore_patterns=[MARKER],
            delete_patterns=DELETE_PATTERNS,
        )
    except PrefkitError:
        raise
    except Exception as exc:  # the network boundary: HTTP, auth, offline mode, connection errors
        raise PrefkitError(
            f"upload to {repo_id} failed ({type(exc).__name__}: {exc}). The folder is built in {staging}; "
            "run the same command again to resume (files already on the Hub are not sent again)."
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
    files = [
        (p.relative_to(staging).as_posix(), p.stat().st_size)
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != MARKER
    ]
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


def _prepare_staging(staging: Path, dataset: Path) -> None:
    """Empty ``staging`` for a rebuild: it must be absent, empty, or a folder prefkit built (marker file)."""
    staging = Path(staging)
    if staging.resolve() == Path(dataset).resolve():
        raise PrefkitError(f"--staging {staging}: cannot be the dataset folder itself")
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


def _inside(path: Path, root: Path) -> Path:
    """``path`` itself, after checking that it is no symbolic link and lies inside the dataset folder ``root``
    (resolved): publish never reads or stages a file from elsewhere."""
    if path.is_symlink():
        raise PrefkitError(
            f"{path}: a symbolic link; publish stages only the dataset folder's own files: replace the link "
            "by the file itself"
        )
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise PrefkitError(
            f"{path}: lies outside the dataset folder {root} (it resolves to {resolved}); publish stages only "
            "the dataset folder's own files"
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


def _repo_url(repo_id: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/datasets/{repo_id}"


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
    table = Table(title=f"{verb} to {escape(summary['url'])} (dataset)", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("size", justify="right")
    for path, size in summary["files"]:
        table.add_row(escape(path), human_size(size))
    total = sum(s for _, s in summary["files"])
    table.add_row(f"[bold]{len(summary['files'])} files[/]", f"[bold]{human_size(total)}[/]")
    console = Console()
    console.print(table)
    splits = ", ".join(
        f"{s} {c['pairs']} pairs / {c['prompts']} prompts" for s, c in summary["splits"].items()
    )
    console.print(
        f"label set {escape(repr(summary['labels']))}: {splits}; folder {escape(summary['staging'])}",
        highlight=False,
        soft_wrap=True,
    )
