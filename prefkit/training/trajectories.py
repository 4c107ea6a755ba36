"""The trajectory data kinds: stored trajectories (``prefkit generate`` shards, or a folder ``prefkit publish``
wrote) with labelled pairs (d3po, dense) or per-sample scores (ddpo, tdpo). docs/formats.md sections 2-6.

``TrajectoryData`` opens the dataset, checks the training run against the dataset's sampling settings
(model, guidance, negative prompt: log-probs under other settings are not the sampled policy's), loads the
items of the objective's data kind, loads the pipeline in the dataset's dtype, and afterwards hands out
micro-batches of trajectories (``fetch``) with their prompts' conditioning: stored prompt embeddings
(``generate --store-embeddings``) in place of the text encoders, or the prompts encoded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prefkit.errors import PrefkitError
from prefkit.fileio import reading
from prefkit.hub import hub_offline
from prefkit.math.losses import per_prompt_advantages
from prefkit.shards import SHARD_PATTERN, group_key, iter_samples, load_array, read_manifest, shard_spec
from prefkit.training.batch import TrainPair, TrainSample, Trajectories, decided
from prefkit.training.table import SCORED_TRAJECTORIES


def _train_pairs(kept, groups_per_shard: int) -> tuple[list[TrainPair], dict[str, int]]:
    """TrainPairs of ``decided`` label records (each row: the records of one pair)."""
    rows, counts = kept
    pairs = []
    for recs, first_won, weight in rows:
        r = recs[0]
        win, lose = (r["key_0"], r["key_1"]) if first_won else (r["key_1"], r["key_0"])
        pairs.append(TrainPair(win, lose, weight, r["group_id"] // groups_per_shard, r["pair_id"]))
    return pairs, counts


def load_train_pairs(folder: Path, labels: str | None, groups_per_shard: int) -> tuple[list[TrainPair], dict]:
    """Decided pairs of the chosen label set(s); several sets are merged by averaging label_0 per pair."""
    from prefkit.label_sets import dataset_samples, label_sets, read_pairs

    available = label_sets(folder)
    if labels is None:
        if len(available) != 1:
            raise PrefkitError(
                f"{folder}: choose the label set(s) with --labels NAME[,NAME]; available: {', '.join(available) or 'none'}"
                + ("" if available else " (run `prefkit label` first)")
            )
        names = available
    else:
        names = [n.strip() for n in labels.split(",") if n.strip()]
    merged: dict[str, list[dict]] = {}
    samples = dataset_samples(folder)  # every record is checked against the dataset's samples
    for name in names:
        for rec in read_pairs(folder, name, samples):
            if rec["has_label"]:
                merged.setdefault(rec["pair_id"], []).append(rec)
    # several sets: label_0 averaged per pair
    labels_0 = ((recs, sum(r["label_0"] for r in recs) / len(recs)) for _, recs in sorted(merged.items()))
    pairs, counts = _train_pairs(decided(labels_0), groups_per_shard)
    ties = counts["ties_skipped"]
    if not pairs:
        raise PrefkitError(
            f"{folder}: label set(s) {', '.join(names)} have no decided pair to train on ({ties} ties)"
        )
    return pairs, {"label_sets": names, "pairs": len(pairs), "ties_skipped": ties}


def open_dataset(spec: str) -> tuple[Path, bool]:
    """(folder, published): a `prefkit generate` folder, a folder written by `prefkit publish`
    (trajectories/manifest.json), or the Hub id of a published dataset (downloaded, or found in the cache)."""
    from prefkit.hub import REPO_ID

    folder = Path(spec).expanduser()
    if not folder.exists() and REPO_ID.fullmatch(spec):
        import huggingface_hub

        try:
            folder = Path(huggingface_hub.snapshot_download(spec, repo_type="dataset"))
        except Exception as exc:  # offline, not found, no access: one clear message, no stack trace
            raise PrefkitError(
                f"DATASET {spec}: no such local folder, and the Hub dataset could not be downloaded"
                + (" (HF_HUB_OFFLINE=1 is set and it is not in the cache)" if hub_offline() else "")
                + f": {type(exc).__name__}: {exc}"
            ) from None
    if not folder.is_dir():
        raise PrefkitError(f"DATASET {folder}: no such folder")
    return folder, (folder / "trajectories" / "manifest.json").is_file()


def load_published_pairs(
    folder: Path, labels: str | None, groups_per_shard: int
) -> tuple[list[TrainPair], dict]:
    """Decided pairs of the ``train`` split of a published folder (data/train-*.parquet): its one label
    set, pairs in pair_id order as load_train_pairs gives them; the validation split is left out."""
    import pyarrow.parquet as pq

    names = sorted(f.name.removesuffix(".meta.json") for f in (folder / "labels").glob("*.meta.json"))
    if labels is not None and [n.strip() for n in labels.split(",") if n.strip()] != names:
        raise PrefkitError(
            f"{folder}: --labels {labels}: this published dataset holds label set {', '.join(names) or 'none'}"
        )
    files = sorted((folder / "data").glob("train-*.parquet"))
    if not files:
        raise PrefkitError(f"{folder}: no train split (data/train-*.parquet) in the published dataset")
    columns = ["pair_id", "key_0", "key_1", "label_0", "has_label", "group_id"]
    rows = [r for f in files for r in pq.read_table(f, columns=columns).to_pylist() if r["has_label"]]
    rows = sorted(rows, key=lambda r: r["pair_id"])
    pairs, counts = _train_pairs(decided(([r], float(r["label_0"])) for r in rows), groups_per_shard)
    ties = counts["ties_skipped"]
    if not pairs:
        raise PrefkitError(f"{folder}: the train split has no decided pair to train on ({ties} ties)")
    return pairs, {"label_sets": names, "split": "train", "pairs": len(pairs), "ties_skipped": ties}


class ShardCache:
    """Samples of the shard in use (latents, lp, timesteps, sigmas, prompt); one shard at a time. Every array
    is checked against the dataset's manifest (dtype, shape, no pickle) as it is loaded."""

    def __init__(self, folder: Path):
        self.folder, self.index, self.samples = folder, None, {}
        self.spec = shard_spec(self._manifest_folder())

    def _manifest_folder(self) -> Path:
        return self.folder

    def _path(self, shard: int) -> Path:
        return self.folder / (SHARD_PATTERN % shard)

    def _read(self, shard: int):
        """(key, latents .npy bytes, logprobs .npy bytes, json) of every sample of a shard."""
        for s in iter_samples(
            [self._path(shard)], decode=False, fields=["latents.npy", "logprobs.npy", "json"]
        ):
            yield s["__key__"], s["latents.npy"], s["logprobs.npy"], s["json"]

    def get(self, shard: int, key: str) -> dict[str, Any]:
        if shard != self.index:
            self.samples = {}
            path = self._path(shard)
            with reading(path):
                for k, latents, logprobs, record in self._read(shard):
                    self.samples[k] = {
                        "latents": torch.from_numpy(
                            load_array(latents, self.spec, "latents.npy", f"{path}: {k}.latents.npy")
                        ),
                        "logprobs": torch.from_numpy(
                            load_array(logprobs, self.spec, "logprobs.npy", f"{path}: {k}.logprobs.npy")
                        ),
                        "record": json.loads(record),
                    }
            self.index = shard
        try:
            return self.samples[key]
        except KeyError:
            raise PrefkitError(f"{self.folder}: sample {key} is labelled but not in shard {shard}") from None


class PublishedShardCache(ShardCache):
    """ShardCache of a published folder: trajectories/shard-XXXXXX.parquet, one row per sample, the
    WebDataset fields' bytes unchanged (prefkit.publish)."""

    def _manifest_folder(self) -> Path:
        return self.folder / "trajectories"

    def _path(self, shard: int) -> Path:
        return self.folder / "trajectories" / (SHARD_PATTERN.removesuffix(".tar") % shard + ".parquet")

    def _read(self, shard: int):
        import pyarrow.parquet as pq

        path = self._path(shard)
        if not path.is_file():
            raise PrefkitError(f"{self.folder}: {path.relative_to(self.folder)} is missing")
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):  # row group by row group: bounded memory
            t = pf.read_row_group(i, columns=["key", "latents", "logprobs", "json"]).to_pydict()
            yield from zip(t["key"], t["latents"], t["logprobs"], t["json"], strict=True)


class EmbeddingStore:
    """Prompt embeddings stored by `generate --store-embeddings`, so no text encoder is loaded."""

    def __init__(self, folder: Path, family, sampler):
        from safetensors.torch import load_file

        self.tensors: dict[str, torch.Tensor] = {}
        for f in sorted((folder / "embeddings").glob("*.safetensors")):
            self.tensors.update(load_file(f))
        self.family, self.sampler = family, sampler

    def conditioning(self, groups: list[int]):
        from prefkit.families import Conditioning

        dev = self.family.device
        t = self.tensors

        def get(name):
            return t[name].to(dev) if name in t else None

        rows = [t[f"{group_key(g)}.prompt_embeds"] for g in groups]
        mask = None
        if len({r.shape for r in rows}) > 1:  # prompts of their own lengths (qwen-image): pad, with a mask
            from prefkit.families import pad_prompt_embeds

            pe, mask = pad_prompt_embeds(rows)
            pe, mask = pe.to(dev), mask.to(dev)
        else:
            pe = torch.stack(rows).to(dev)
        pooled = None
        if f"{group_key(groups[0])}.pooled" in t:
            pooled = torch.stack([t[f"{group_key(g)}.pooled"] for g in groups]).to(dev)
        cond = Conditioning(prompt_embeds=pe, pooled=pooled, text_ids=get("text_ids"), prompt_mask=mask)
        if self.sampler.guided and "negative.prompt_embeds" in t:
            n = len(groups)
            neg = get("negative.prompt_embeds")
            cond.negative_prompt_embeds = neg.expand(n, *neg.shape)
            npool = get("negative.pooled")
            cond.negative_pooled = None if npool is None else npool.expand(n, *npool.shape)
        return cond


def load_scored_samples(folder: Path, cfg, groups_per_shard: int) -> tuple[list[TrainSample], dict[str, Any]]:
    """The samples of ONE label set's per-sample scores, with their advantages."""
    from prefkit.label_sets import dataset_samples, label_paths, label_sets, read_meta, read_scores

    available = label_sets(folder)
    names = [n.strip() for n in cfg.labels.split(",") if n.strip()] if cfg.labels else available
    if len(names) != 1:
        raise PrefkitError(
            f"{folder}: --objective {cfg.objective} trains on the scores of ONE label set; choose it with "
            f"--labels NAME; available: {', '.join(available) or 'none (run `prefkit label` with a scorer)'}"
        )
    name = names[0]
    paths = label_paths(folder, name)
    if not paths["meta"].is_file():
        raise PrefkitError(
            f"{folder}: no complete label set {name!r}; sets here: {', '.join(available) or 'none'}"
        )
    if not paths["scores"].is_file():
        source = read_meta(folder, name).get("source", "?")
        raise PrefkitError(
            f"{paths['scores']}: no such file: label set {name!r} (source {source}) holds pairs only, no "
            f"per-sample scores; --objective {cfg.objective} needs a scorer's label set "
            "(`prefkit label DATASET --source jpeg|aesthetic|pickscore|hps|imagereward|llava|python:module:function`)"
        )
    samples = dataset_samples(folder)
    records = read_scores(folder, name, samples)  # each checked against the schema and the dataset
    keys = [rec["key"] for rec in records]
    scores = [float(rec["score"]) for rec in records]
    if len(keys) < 2:
        raise PrefkitError(f"{paths['scores']}: {len(keys)} scored sample(s); advantages need at least 2")
    prompts = [samples[k].prompt for k in keys]
    adv = per_prompt_advantages(scores, prompts, cfg.min_prompt_count, cfg.adv_clip).tolist()
    items = [
        TrainSample(k, s, a, samples[k].group_id // groups_per_shard, samples[k].prompt, samples[k].group_id)
        for k, s, a in zip(keys, scores, adv, strict=True)
    ]
    counts: dict[str, int] = {}
    for p in prompts:
        counts[p] = counts.get(p, 0) + 1
    t = torch.tensor(scores, dtype=torch.float64)
    info = {
        "label_sets": [name],
        "samples": len(items),
        "prompts": len(counts),
        "prompts_with_own_stats": sum(c >= max(cfg.min_prompt_count, 1) for c in counts.values()),
        "score_mean": float(t.mean()),
        "score_std": float(t.std(unbiased=False)),
    }
    return items, info


def check_sampling_policy(cfg, sampled_with: dict[str, Any]) -> None:
    """The dataset's sampling policy must be where training starts: its --lora is this run's --init-lora."""
    sampled = sampled_with.get("lora")
    start = str(Path(cfg.init_lora).expanduser().resolve()) if cfg.init_lora else None
    if sampled != start and not cfg.force:
        raise PrefkitError(
            f"--objective {cfg.objective}: the stored lp are the importance ratio's old policy, but the dataset "
            f"was sampled by {'the LoRA ' + sampled if sampled else 'the base model (no LoRA)'} and training "
            f"starts from {'the LoRA ' + start if start else 'a fresh LoRA (the base model)'}. "
            + (f"Pass --init-lora {sampled}" if sampled else "Leave out --init-lora")
            + ", or --force to train anyway"
        )


class TrajectoryData:
    """A trajectory dataset as the training data of one run (data kinds trajectory-pairs and
    scored-trajectories of the objectives table)."""

    def __init__(self, cfg, kind: str):
        from prefkit.families import loadable

        self.cfg = cfg
        folder, published = open_dataset(cfg.dataset)
        # a published folder keeps the manifest and embeddings under trajectories/; its shards are finished
        self.folder, self.published = folder, published
        self.traj = folder / "trajectories" if published else folder
        manifest = self.manifest = read_manifest(self.traj)
        if not published and manifest.get("status") != "complete":
            raise PrefkitError(
                f"{folder}: the dataset is not complete; finish it with `prefkit generate --resume`"
            )
        sampled = self.sampled_with = manifest["settings"]  # the settings it was sampled with
        self.model = cfg.model or sampled["model"]
        self.load_from = self.model if cfg.model else loadable(self.model, manifest["model"].get("path"))
        stored_reference = getattr(cfg, "reference", "live") == "stored"
        mismatches = []
        if cfg.model and cfg.model != sampled["model"]:
            mismatches.append(f"--model {cfg.model} (dataset: {sampled['model']})")
        if cfg.guidance is not None and cfg.guidance != sampled["guidance"]:
            mismatches.append(f"--guidance {cfg.guidance} (dataset: {sampled['guidance']})")
        if cfg.negative_prompt is not None and cfg.negative_prompt != sampled["negative_prompt"]:
            mismatches.append(
                f"--negative-prompt {cfg.negative_prompt!r} (dataset: {sampled['negative_prompt']!r})"
            )
        if mismatches and (stored_reference or not cfg.force):
            raise PrefkitError(
                "the training run's settings differ from the dataset's: "
                + "; ".join(mismatches)
                + (
                    "; --reference stored needs the dataset's own model and settings"
                    if stored_reference
                    else "; log-probs under other settings are not the sampled policy's. Pass --force to train anyway"
                )
            )
        self.guidance = sampled["guidance"] if cfg.guidance is None else cfg.guidance
        self.negative = sampled["negative_prompt"] if cfg.negative_prompt is None else cfg.negative_prompt
        groups_per_shard = manifest["plan"]["groups_per_shard"]
        if kind == SCORED_TRAJECTORIES:
            if published:
                raise PrefkitError(
                    f"--objective {cfg.objective} trains on per-sample scores: give the `prefkit generate` folder "
                    "with a scorer's label set (a published dataset keeps pairs only)"
                )
            check_sampling_policy(cfg, sampled)
            self.items, self.info = load_scored_samples(folder, cfg, groups_per_shard)
        else:
            load_pairs = load_published_pairs if published else load_train_pairs
            self.items, self.info = load_pairs(folder, cfg.labels, groups_per_shard)
        # stored prompt embeddings replace the text encoders, unless the negative prompt was overridden
        self.has_embeddings = (self.traj / "embeddings").is_dir() and self.negative == sampled[
            "negative_prompt"
        ]
        self.family = self.sampler = self.schedule = self.embeds = None
        self.cache = (PublishedShardCache if published else ShardCache)(folder)

    def load_pipeline(self, device):
        """The dataset's model (or --model) in the dataset's dtype; no text encoders with stored embeddings."""
        from prefkit.families import DTYPES, load_pipeline

        s = self.sampled_with
        return load_pipeline(self.load_from, s["revision"], DTYPES[s["dtype"]], device, self.has_embeddings)

    def bind(self, family) -> None:
        """The sampler settings and schedule the trajectories were sampled with, for ``family``."""
        from prefkit.sampling import SamplerSettings

        s = self.sampled_with
        self.family = family
        self.sampler = SamplerSettings(
            steps=s["steps"],
            guidance=self.guidance,
            noise=s[family.noise_flag],
            height=s["height"],
            width=s["width"],
            negative_prompt=self.negative,
        )
        self.schedule = family.schedule(self.sampler.steps, self.sampler.height, self.sampler.width)
        self.embeds = EmbeddingStore(self.traj, family, self.sampler) if self.has_embeddings else None

    def conditioning(self, samples: list[dict]):
        """The conditioning of samples (ShardCache entries): stored embeddings, else the prompts encoded."""
        from prefkit.sampling import encode

        if self.embeds is not None:
            return self.embeds.conditioning([s["record"]["group_id"] for s in samples])
        return encode(self.family, [s["record"]["prompt"] for s in samples], self.sampler)

    def samples(self, keys: list[tuple[int, str]]) -> list[dict]:
        """ShardCache entries of (shard, key)s; consecutive keys of one shard are read together."""
        return [self.cache.get(shard, key) for shard, key in keys]

    def trajectories(self, samples: list[dict]) -> Trajectories:
        """ShardCache entries as one forward batch, in their order, with their conditioning."""
        return Trajectories(
            chains=torch.stack([s["latents"] for s in samples]).float(),  # [n, K+1, C, h, w]
            stored_lp=torch.stack([s["logprobs"] for s in samples]).float(),  # [n, K]
            cond=self.conditioning(samples),
        )

    def stored_lp_problems(self) -> list[str]:
        """Why the stored lp cannot be the base model's under this run's settings (empty: they may be)."""
        s, family, sampler = self.sampled_with, self.family, self.sampler
        problems = []
        if self.model != s["model"]:
            problems.append(f"model {self.model} != dataset's {s['model']}")
        scheduler = type(family.pipe.scheduler).__name__
        if scheduler != self.manifest["model"]["scheduler"]:
            problems.append(f"scheduler {scheduler} != dataset's {self.manifest['model']['scheduler']}")
        if sampler.guidance != s["guidance"] or sampler.negative_prompt != s["negative_prompt"]:
            problems.append("guidance or negative prompt differ from the dataset's")
        if s.get("lora"):
            problems.append(f"the dataset was sampled with a LoRA ({s['lora']}), not by the base model")
        return problems

    def summary(self) -> dict[str, Any]:
        return {"labels": self.info, "dataset": str(self.folder), "model": self.model}

    def validation_sampler(self):
        """Validation images are sampled as the dataset was (steps, guidance, noise, size)."""
        return self.sampler

    def result(self) -> dict[str, Any]:
        """Entries of run_train's result besides the metrics: none."""
        return {}
