"""``prefkit train``: offline D3PO or dense-reward DPO on stored trajectories, LoRA, accelerate.

Diffusion-DPO on final image pairs lives in prefkit.train_images, and DDPO / TDPO on per-sample scores in
prefkit.train_rewards; all three use the shared machinery of prefkit.train_engine (start_accelerator,
setup_run, begin_outputs, train_loop, finish_run), re-exported here. --kl-coef (DPOK's KL to the
reference) and --init-lora apply to every trajectory objective.

Reads top to bottom: settings and checks (dataset, labels, model, guidance), the policy (base denoiser
+ LoRA; the reference is the SAME network with the adapters disabled, docs/math.md section 12), the pair stream,
the loop (micro-batches, accumulation, clipping, AdamW, schedule), checkpoints and metrics.

Data. Every labelled, decided pair (ties and pairs without a verdict weigh 0 and are left out) is a
(winner, loser) of one prompt group, and a prompt group lives in one shard. Each epoch the shards are
shuffled, then the pairs of each shard (seeded by (seed, epoch)); samples are read shard by shard, so
at most one shard's samples are in memory. Global micro-batch m is positions [m B N, (m + 1) B N) of
that order (B pairs per process, N processes); process r takes its slice r. The per-pair random
choices (which steps) are seeded by (seed, epoch, position): independent of B, N and resumes, which
makes batch 4 x 1 == batch 1 x 4, 2 processes == 1 process and resumed == uninterrupted.

Per pair, S steps are trained on (k = 0 the first step from noise):
  d3po   the first int(K * timestep_fraction) of a per-pair permutation, one sigmoid per step;
  dense  all K steps with w_k = gamma^k / sum (steps_per_pair = 0), or steps_per_pair draws from
         Cat(w) with weight 1 / draws each, one sigmoid over the weighted sum.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from prefkit.config import TrainConfig
from prefkit.errors import PrefkitError
from prefkit.fileio import reading
from prefkit.math.losses import (
    d3po_loss,
    dense_dpo_loss,
    gamma_weights,
    gaussian_step_kl,
    sample_dense_steps,
    soft_label_weight,
)
from prefkit.shards import (
    SHARD_PATTERN,
    group_key,
    iter_samples,
    load_array,
    read_manifest,
    shard_spec,
)
from prefkit.train_engine import (  # noqa: F401 (re-exported: callers and tests use prefkit.train.NAME)
    CONTEXT_TARGETS,
    DEFAULT_TARGETS,
    OBJECTIVES,
    RESUME_KEYS,
    REWARD_OBJECTIVES,
    SUMMARY_WINDOW,
    NonFiniteLoss,
    Run,
    TrainPair,
    _offline,
    _torch_save,
    _trackers,
    _write_yaml,
    add_extras,
    add_lora,
    begin_outputs,
    check_finite,
    check_out,
    epoch_order,
    finish_run,
    latest_checkpoint,
    load_checkpoint,
    load_init_lora,
    lora_state,
    recent_means,
    reference_mode,
    resolve,
    save_checkpoint,
    save_lora,
    save_run_checkpoint,
    seeded_generator,
    setup_run,
    start_accelerator,
    sync_context,
    train_loop,
    truncate_metrics,
)

# -- settings -----------------------------------------------------------------------------------------


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
    pairs, ties = [], 0
    for pair_id in sorted(merged):
        recs = merged[pair_id]
        label = sum(r["label_0"] for r in recs) / len(recs)
        weight = soft_label_weight(label)
        if weight == 0:
            ties += 1
            continue
        r = recs[0]
        win, lose = (r["key_0"], r["key_1"]) if label > 0.5 else (r["key_1"], r["key_0"])
        pairs.append(TrainPair(win, lose, weight, r["group_id"] // groups_per_shard, pair_id))
    if not pairs:
        raise PrefkitError(
            f"{folder}: label set(s) {', '.join(names)} have no decided pair to train on ({ties} ties)"
        )
    return pairs, {"label_sets": names, "pairs": len(pairs), "ties_skipped": ties}


def open_dataset(spec: str) -> tuple[Path, bool]:
    """(folder, published): a `prefkit generate` folder, a folder written by `prefkit publish`
    (trajectories/manifest.json), or the Hub id of a published dataset (downloaded, or found in the cache)."""
    from prefkit.publish import REPO_ID

    folder = Path(spec).expanduser()
    if not folder.exists() and REPO_ID.fullmatch(spec):
        import huggingface_hub

        try:
            folder = Path(huggingface_hub.snapshot_download(spec, repo_type="dataset"))
        except Exception as exc:  # offline, not found, no access: one clear message, no stack trace
            raise PrefkitError(
                f"DATASET {spec}: no such local folder, and the Hub dataset could not be downloaded"
                + (" (HF_HUB_OFFLINE=1 is set and it is not in the cache)" if _offline() else "")
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
    pairs, ties = [], 0
    for r in sorted(rows, key=lambda r: r["pair_id"]):
        label = float(r["label_0"])
        weight = soft_label_weight(label)
        if weight == 0:
            ties += 1
            continue
        win, lose = (r["key_0"], r["key_1"]) if label > 0.5 else (r["key_1"], r["key_0"])
        pairs.append(TrainPair(win, lose, weight, r["group_id"] // groups_per_shard, r["pair_id"]))
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


# -- the policy ---------------------------------------------------------------------------------------


# -- the loop -----------------------------------------------------------------------------------------


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train a LoRA on ``cfg.dataset``; returns the final metrics record."""
    if cfg.objective == "diffusion-dpo":
        from prefkit.train_images import run_image_train

        return run_image_train(cfg)

    from prefkit.families import DTYPES, family_of, load_pipeline, loadable
    from prefkit.sampling import SamplerSettings

    cfg = resolve(cfg)
    out = Path(cfg.out).expanduser()
    folder, published = open_dataset(cfg.dataset)
    # a published folder keeps the manifest and embeddings under trajectories/; its shards are finished
    traj = folder / "trajectories" if published else folder
    manifest = read_manifest(traj)
    if not published and manifest.get("status") != "complete":
        raise PrefkitError(
            f"{folder}: the dataset is not complete; finish it with `prefkit generate --resume`"
        )
    settings = manifest["settings"]
    model = cfg.model or settings["model"]
    load_from = model if cfg.model else loadable(model, manifest["model"].get("path"))
    mismatches = []
    if cfg.model and cfg.model != settings["model"]:
        mismatches.append(f"--model {cfg.model} (dataset: {settings['model']})")
    if cfg.guidance is not None and cfg.guidance != settings["guidance"]:
        mismatches.append(f"--guidance {cfg.guidance} (dataset: {settings['guidance']})")
    if cfg.negative_prompt is not None and cfg.negative_prompt != settings["negative_prompt"]:
        mismatches.append(
            f"--negative-prompt {cfg.negative_prompt!r} (dataset: {settings['negative_prompt']!r})"
        )
    if mismatches and (cfg.reference == "stored" or not cfg.force):
        raise PrefkitError(
            "the training run's settings differ from the dataset's: "
            + "; ".join(mismatches)
            + (
                "; --reference stored needs the dataset's own model and settings"
                if cfg.reference == "stored"
                else "; log-probs under other settings are not the sampled policy's. Pass --force to train anyway"
            )
        )
    guidance = settings["guidance"] if cfg.guidance is None else cfg.guidance
    negative = settings["negative_prompt"] if cfg.negative_prompt is None else cfg.negative_prompt
    reward = cfg.objective in REWARD_OBJECTIVES
    if reward:
        from prefkit.train_rewards import check_sampling_policy, load_scored_samples

        if published:
            raise PrefkitError(
                f"--objective {cfg.objective} trains on per-sample scores: give the `prefkit generate` folder "
                "with a scorer's label set (a published dataset keeps pairs only)"
            )
        check_sampling_policy(cfg, settings)
        pairs, label_info = load_scored_samples(folder, cfg, manifest["plan"]["groups_per_shard"])
    else:
        load_pairs = load_published_pairs if published else load_train_pairs
        pairs, label_info = load_pairs(folder, cfg.labels, manifest["plan"]["groups_per_shard"])
    check_out(out, cfg)

    accelerator = start_accelerator(cfg, out)
    # stored prompt embeddings replace the text encoders, unless the negative prompt was overridden
    has_embeddings = (traj / "embeddings").is_dir() and negative == settings["negative_prompt"]
    pipe = load_pipeline(
        load_from, settings["revision"], DTYPES[settings["dtype"]], accelerator.device, has_embeddings
    )
    family = family_of(pipe)
    noise = settings["eta"] if family.name == "ddim" else settings["noise_level"]
    sampler = SamplerSettings(
        steps=settings["steps"],
        guidance=guidance,
        noise=noise,
        height=settings["height"],
        width=settings["width"],
        negative_prompt=negative,
    )
    schedule = family.schedule(sampler.steps, sampler.height, sampler.width)
    run = setup_run(cfg, out, accelerator, pipe, family)
    embeds = EmbeddingStore(traj, family, sampler) if has_embeddings else None
    cache = (PublishedShardCache if published else ShardCache)(folder)
    summary: dict[str, Any] = {"labels": label_info, "dataset": str(folder), "model": model}
    if reward:
        # the stored lp are the old policy of the importance ratio; the KL's reference is live
        from prefkit.train_rewards import RewardStep

        step = RewardStep(cfg, run, family, schedule, sampler, cache, embeds, pairs)
        check = step.choose_old_policy(pairs)
        begin_outputs(run)
        last = train_loop(run, pairs, step, unit="samples")
        step.save(out)
        old_policy = "live" if step.old_live else "stored"
        summary.update(reference=old_policy, old_policy=old_policy, objective=cfg.objective)
        summary["stored_lp_check"] = check.to_dict()
        if step.critic is not None:
            summary["critic_neurons_reset"] = step.neurons_reset
    else:
        if cfg.reference == "stored":
            check = verify_stored_reference(
                family, run.denoiser, schedule, sampler, pairs, cache, embeds, manifest, model, accelerator
            )
            summary["stored_lp_check"] = check.to_dict()
            if not check.exact:  # the steps use the live reference; config.yaml (run.cfg) keeps "stored"
                cfg = dataclasses.replace(cfg, reference="live")
        begin_outputs(run)

        def step(batch, sync: bool) -> dict:
            return micro_batch(
                cfg, family, run.denoiser, run.net, accelerator, schedule, sampler, batch, cache, embeds, sync
            )

        last = train_loop(run, pairs, step)
        summary["reference"] = cfg.reference
    if cfg.init_lora:
        summary["init_lora"] = str(Path(cfg.init_lora).expanduser().resolve())
    recent = finish_run(run, {"final": last, **summary})
    return {**last, "recent": recent}


# -- the machinery shared by every objective ---------------------------------------------------------


def micro_batch(
    cfg, family, denoiser, net, accelerator, schedule, sampler, batch, cache, embeds, sync
) -> dict:
    """Forward (reference, then policy) and backward of one micro-batch of B pairs; returns metrics."""
    from prefkit.math.logprob import gaussian_logprob
    from prefkit.sampling import encode, step_distribution

    K = schedule.num_steps
    B = len(batch)
    dev = family.device
    # the steps of each pair, seeded by (seed, epoch, position) -- independent of batching
    steps, step_w = [], []
    for _, epoch, position in batch:
        g = seeded_generator(cfg.seed, epoch, position)
        if cfg.objective == "d3po":
            n = max(1, int(K * cfg.timestep_fraction))
            steps.append(torch.randperm(K, generator=g)[:n])
            step_w.append(torch.full((n,), 1.0 / n))
        elif cfg.steps_per_pair == 0:
            steps.append(torch.arange(K))
            step_w.append(gamma_weights(K, cfg.gamma))
        else:
            steps.append(sample_dense_steps(K, cfg.gamma, cfg.steps_per_pair, g))
            step_w.append(torch.full((cfg.steps_per_pair,), 1.0 / cfg.steps_per_pair))
    steps_t = torch.stack(steps)  # [B, S]
    weights_t = torch.stack(step_w)  # [B, S]
    S = steps_t.shape[1]
    # winner and loser of a pair come from one shard: read them together (a batch that crosses a shard
    # boundary then loads each shard once)
    fetched = [(cache.get(p.shard, p.key_w), cache.get(p.shard, p.key_l)) for p, _, _ in batch]
    both = [w for w, _ in fetched] + [lo for _, lo in fetched]  # winners first, then losers: [2B]
    chains = torch.stack([s["latents"] for s in both]).float()  # [2B, K+1, C, h, w]
    stored_lp = torch.stack([s["logprobs"] for s in both]).float()  # [2B, K]
    prompts = [s["record"]["prompt"] for s in both]
    if embeds is not None:
        cond = embeds.conditioning([s["record"]["group_id"] for s in both])
    else:
        cond = encode(family, prompts, sampler)
    pair_w = torch.tensor([p.weight for p, _, _ in batch], device=dev)

    def lp_at(j: int):
        """(lp [2B], the step's Gaussian) of the j-th trained step of every winner and loser."""
        k = torch.cat([steps_t[:, j], steps_t[:, j]])  # [2B]
        x = chains[torch.arange(2 * B), k].to(dev)
        x_next = chains[torch.arange(2 * B), k + 1].to(dev)
        with accelerator.autocast():
            dist = step_distribution(family, x, k, schedule, cond, sampler)
        return gaussian_logprob(x_next, dist.mean, dist.std), dist

    # the reference: stored lp, or the base model (adapters off), no gradient. With --kl-coef the
    # reference's step means are needed too (DPOK's KL): one forward with the adapters off either way
    kl_on = cfg.kl_coef > 0
    ref_means: list[torch.Tensor] = []
    if cfg.reference == "stored":
        idx = torch.cat([steps_t, steps_t])  # [2B, S]
        ref = stored_lp.gather(1, idx).to(dev)
        if kl_on:
            with torch.no_grad(), reference_mode(denoiser):
                ref_means = [lp_at(j)[1].mean for j in range(S)]
    else:
        with torch.no_grad(), reference_mode(denoiser):
            outs = [lp_at(j) for j in range(S)]
        ref = torch.stack([lp for lp, _ in outs], dim=1)  # [2B, S]
        ref_means = [d.mean for _, d in outs] if kl_on else []
    ref_w, ref_l = ref[:B], ref[B:]
    scale = 1.0 / cfg.grad_accum
    stats = {"loss": 0.0, "accuracy": 0.0, "log_ratio_w": 0.0, "log_ratio_l": 0.0}
    if kl_on:
        stats["kl"] = 0.0

    def kl_at(j: int, dist) -> torch.Tensor:
        """DPOK's KL of step j, averaged over the winners' and losers' samples (0 when --kl-coef is 0)."""
        if not kl_on:
            return torch.zeros((), device=dev)
        return gaussian_step_kl(dist.mean, ref_means[j], dist.std).mean()

    if cfg.objective == "d3po":
        # one sigmoid per step: forward and backward step by step (activations of one step at a time)
        margins = torch.zeros(B, device=dev)
        for j in range(S):
            with sync_context(accelerator, net, sync and j == S - 1):
                lp, dist = lp_at(j)
                res = d3po_loss(
                    lp[:B, None],
                    ref_w[:, j : j + 1],
                    lp[B:, None],
                    ref_l[:, j : j + 1],
                    cfg.beta,
                    cfg.eps,
                    pair_w,
                )
                kl = kl_at(j, dist)
                loss = res.loss + cfg.kl_coef * kl
                check_finite(loss, accelerator)
                accelerator.backward(loss * (scale / S))
            stats["loss"] += loss.item() / S
            if kl_on:
                stats["kl"] += kl.item() / S
            margins += (lp[:B] - ref_w[:, j] - (lp[B:] - ref_l[:, j])).detach()
            stats["log_ratio_w"] += (lp[:B] - ref_w[:, j]).mean().item() / S
            stats["log_ratio_l"] += (lp[B:] - ref_l[:, j]).mean().item() / S
        stats["accuracy"] = float((margins > 0).float().mean())
    else:
        with sync_context(accelerator, net, sync):
            outs = [lp_at(j) for j in range(S)]
            lp = torch.stack([lp for lp, _ in outs], dim=1)  # [2B, S]
            res = dense_dpo_loss(lp[:B], ref_w, lp[B:], ref_l, weights_t.to(dev), cfg.beta, cfg.clip, pair_w)
            # the KL of the steps used, plain mean over them (not gamma-weighted)
            kl = torch.stack([kl_at(j, d) for j, (_, d) in enumerate(outs)]).mean()
            loss = res.loss + cfg.kl_coef * kl
            check_finite(loss, accelerator)
            accelerator.backward(loss * scale)
        stats["loss"] = loss.item()
        if kl_on:
            stats["kl"] = kl.item()
        stats["accuracy"] = float((res.logits > 0).float().mean())
        stats["log_ratio_w"] = (lp[:B] - ref_w).mean().item()
        stats["log_ratio_l"] = (lp[B:] - ref_l).mean().item()
    return stats


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

        pe = torch.stack([t[f"{group_key(g)}.prompt_embeds"] for g in groups]).to(dev)
        pooled = None
        if f"{group_key(groups[0])}.pooled" in t:
            pooled = torch.stack([t[f"{group_key(g)}.pooled"] for g in groups]).to(dev)
        cond = Conditioning(prompt_embeds=pe, pooled=pooled, text_ids=get("text_ids"))
        if self.sampler.guided and "negative.prompt_embeds" in t:
            n = len(groups)
            neg = get("negative.prompt_embeds")
            cond.negative_prompt_embeds = neg.expand(n, *neg.shape)
            npool = get("negative.pooled")
            cond.negative_pooled = None if npool is None else npool.expand(n, *npool.shape)
        return cond


def verify_stored_reference(
    family, denoiser, schedule, sampler, pairs, cache, embeds, manifest, model, accelerator
):
    """--reference stored: the stored lp must BE the reference's -- same model, scheduler, guidance and
    negative prompt, no LoRA at sampling (else refused) -- and a live recomputation of a few transitions
    must agree within the precision's rounding (prefkit.stored_lp; else refused). Returns the measurement:
    where it is not exact (a precision below float32) the caller trains with the live reference, which
    is exact in any precision, and a one-line note says so."""
    from prefkit.progress import note
    from prefkit.sampling import encode
    from prefkit.stored_lp import check_stored_lp, coarser, compute_precision

    s = manifest["settings"]
    problems = []
    if model != s["model"]:
        problems.append(f"model {model} != dataset's {s['model']}")
    if type(family.pipe.scheduler).__name__ != manifest["model"]["scheduler"]:
        problems.append(
            f"scheduler {type(family.pipe.scheduler).__name__} != dataset's {manifest['model']['scheduler']}"
        )
    if sampler.guidance != s["guidance"] or sampler.negative_prompt != s["negative_prompt"]:
        problems.append("guidance or negative prompt differ from the dataset's")
    if s.get("lora"):
        problems.append(f"the dataset was sampled with a LoRA ({s['lora']}), not by the base model")
    check = None
    if not problems:

        def conditioning(samples):
            if embeds:
                return embeds.conditioning([smp["record"]["group_id"] for smp in samples])
            return encode(family, [smp["record"]["prompt"] for smp in samples], sampler)

        p = pairs[0]
        precision = coarser(
            manifest["model"]["dtype"],
            compute_precision(family.dtype, accelerator.mixed_precision, accelerator.device),
        )
        samples = [cache.get(p.shard, key) for key in (p.key_w, p.key_l)]
        check = check_stored_lp(
            family,
            schedule,
            sampler,
            samples,
            conditioning,
            precision,
            accelerator.autocast,
            lambda: reference_mode(denoiser),
        )
        if not check.consistent:
            problems.append(
                f"a live recomputation of the reference lp differs beyond rounding: {check.describe()}"
            )
    if problems:
        raise PrefkitError(
            "--reference stored refused: " + "; ".join(problems) + ". Use --reference live (the default)."
        )
    if not check.exact:
        note(
            accelerator.is_main_process,
            f"--reference stored: the stored lp are not exact in {check.precision} ({check.describe()}); "
            "training with --reference live (one gradient-free forward per step, exact in any precision)",
        )
    return check


# -- checkpoints --------------------------------------------------------------------------------------
