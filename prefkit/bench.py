"""Benchmarks that report ratios against a baseline measured in the same run (machines are noisy).

``prefkit bench generate``: time per trajectory of prefkit's generation (sampling with log-probs,
float16 chain, PNG and shard encoding) against a plain diffusers ``pipe(...)`` call that makes the same
number of images with the same model, steps, guidance, size and batch. The two are interleaved
(A B A B ...) so drifts in machine speed hit both alike; medians are reported.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Figure:
    """One figure: ``measured`` and ``baseline_values`` are per-repeat values in ``quantity`` per
    ``unit`` (ms per trajectory, MiB per run, KiB per trajectory, samples/s), taken in the same run;
    the ratio of each repeat is measured / baseline, reported as median and min..max."""

    name: str
    measured: list[float]
    baseline_values: list[float]
    target: float | None = None
    unit: str = "trajectory"
    baseline: str = "plain diffusers pipe(...)"
    quantity: str = "ms"
    at_least: bool = False  # the target is a lower bound (ratio >= target), else an upper bound

    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.measured, self.baseline_values, strict=True)]

    def summary(self) -> dict[str, Any]:
        r = self.ratios()
        med = statistics.median(r)
        meets = None
        if self.target is not None:
            meets = med >= self.target if self.at_least else med <= self.target
        return {
            "figure": self.name,
            "unit": self.unit,
            "quantity": self.quantity,
            "measured": statistics.median(self.measured),
            "baseline": self.baseline,
            "baseline_measured": statistics.median(self.baseline_values),
            "ratio_median": med,
            "ratio_min": min(r),
            "ratio_max": max(r),
            "repeats": len(r),
            "target": self.target,
            "target_op": None if self.target is None else (">=" if self.at_least else "<="),
            "meets_target": meets,
        }


@dataclass
class Skipped:
    """A figure that could not be taken in this run, and why (printed and written in its place)."""

    name: str
    reason: str
    target: float | None = None

    def summary(self) -> dict[str, Any]:
        return {"figure": self.name, "skipped": self.reason, "target": self.target}


def timed(fn, device: str) -> float:
    """Wall seconds of ``fn()``, with the CUDA queue drained before and after on a GPU."""
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bench_generate(
    model: str = "tiny-sd3",
    device: str = "cpu",
    steps: int = 20,
    batch_size: int = 8,
    repeats: int = 5,
    guidance: float = 5.0,
    dtype: str = "auto",
    height: int | None = None,
    width: int | None = None,
) -> Figure:
    """prefkit generate vs ``pipe(...)``: same model, steps, guidance, size, batch, initial noise.

    Prompts are encoded inside both timed calls: prefkit's per-prompt cache is emptied before each of
    its runs (``pipe(...)`` encodes every call), so neither side reuses text encodings of the last."""
    from prefkit.families import DTYPES, family_of, load_pipeline
    from prefkit.generate import encode_sample
    from prefkit.sampling import SamplerSettings, sample

    pipe = load_pipeline(model, dtype=DTYPES[_dtype_name(dtype, device)], device=torch.device(device))
    fam = family_of(pipe)
    h0, w0 = fam.default_size()
    h, w = height or h0, width or w0
    fam.check_size(h, w)
    noise = fam.default_noise
    st = SamplerSettings(steps=steps, guidance=guidance, noise=noise, height=h, width=w)
    prompts = [f"a photo of object {i}" for i in range(batch_size)]
    kwargs: dict[str, Any] = {"num_inference_steps": steps, "height": h, "width": w, "output_type": "pil"}
    kwargs |= fam.stock_call_kwargs(guidance, batch_size)
    if fam.noise_flag == "eta":  # DDIM samples with eta; the stock flow pipelines have no noise to set
        kwargs["eta"] = noise

    def run_prefkit(seed0: int) -> None:
        fam.forget_prompt_encodings()  # time the text encoders too, as in every pipeline call
        traj = sample(fam, prompts, list(range(seed0, seed0 + batch_size)), st)
        for b in range(batch_size):
            encode_sample({"key": f"g{b:08d}_s00"}, traj, b, fam.sampler_kind)

    def run_pipe(seed0: int) -> None:
        gens = [torch.Generator("cpu").manual_seed(seed0 + i) for i in range(batch_size)]
        pipe(prompts, generator=gens, **kwargs)

    run_prefkit(0)  # warm-up both (kernel selection, allocator, caches)
    run_pipe(0)
    ours, base = [], []
    for r in range(repeats):
        ours.append(timed(lambda r=r: run_prefkit(1000 * (r + 1)), device))
        base.append(timed(lambda r=r: run_pipe(1000 * (r + 1)), device))
    return Figure(
        f"generate ({_model_tag(model)}, {fam.name}, {h} x {w} px, {steps} steps, batch {batch_size})",
        [1000 * s / batch_size for s in ours],
        [1000 * s / batch_size for s in base],
        1.05,
    )


def _dtype_name(dtype: str, device: str) -> str:
    """``auto`` is what prefkit generate picks: float32 on the CPU, bfloat16 on CUDA."""
    return dtype if dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")


def _model_tag(model: str) -> str:
    """A short name for a figure: a built-in name or Hub id as is, a local folder by its last part."""
    from pathlib import Path

    return Path(model).name if Path(model).expanduser().is_dir() else model


def _read_settings(folder) -> dict[str, Any]:
    from prefkit.shards import read_manifest

    return read_manifest(folder)["settings"]


# -- storage ------------------------------------------------------------------------------------------


def bench_storage(steps: int = 20, repeats: int = 3, size: int = 128) -> list[Figure]:
    """Bytes on disk per trajectory at an SD-1.5-sized latent: tiny-sd15 (VAE x2) at 128 px makes
    4 x 64 x 64 latents. One shard per repeat (4 samples of one prompt, the default samples per
    prompt); the ratio is the shard file's bytes (tar headers, padding and end-of-archive record
    included) over the same samples' float16 chains ([K + 1, 4, 64, 64] x 2 bytes) plus their PNGs.
    D3PO's layout is computed: latents and next_latents ([K, 4, 64, 64] each, float16) in a pickle
    (pickle framing not counted), plus the same PNG."""
    import tempfile
    from pathlib import Path

    from prefkit.config import GenerateConfig
    from prefkit.generate import run_generate
    from prefkit.shards import SHARD_GLOB, iter_samples

    ours, chain_png, d3po = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "ds"
        prompts = [f"a photo of object {i}" for i in range(repeats)]
        cfg = GenerateConfig(
            out=str(ds), model="tiny-sd15", prompt=prompts, steps=steps, height=size, width=size,
            groups_per_shard=1, batch_size=4, quiet=True,
        )  # fmt: skip
        run_generate(cfg)
        for shard in sorted(ds.glob(SHARD_GLOB)):
            chains = pngs = n = 0
            shape = None
            for s in iter_samples([shard], decode=False):
                from prefkit.shards import npy_load

                lat = npy_load(s["latents.npy"])
                shape = lat.shape
                chains += lat.size * 2  # one float16 copy
                pngs += len(s["png"])
                n += 1
            ours.append(shard.stat().st_size / n / 1024)
            chain_png.append((chains + pngs) / n / 1024)
            k1, c, h, w = shape
            d3po.append((2 * (k1 - 1) * c * h * w * 2 + pngs / n) / 1024)
    tag = f"{c} x {h} x {w} latents, {k1 - 1} steps"
    return [
        Figure(
            f"bytes on disk per trajectory ({tag})",
            ours,
            chain_png,
            1.10,
            unit="trajectory",
            baseline="float16 chain + PNG",
            quantity="KiB",
        ),
        Figure(
            f"D3PO layout: chain twice, float16 pickle, + PNG (computed; {tag})",
            d3po,
            chain_png,
            None,
            unit="trajectory",
            baseline="float16 chain + PNG",
            quantity="KiB",
        ),
    ]


# -- training -----------------------------------------------------------------------------------------


def _per_step_s(metrics: "Path", batch_size: int) -> float:  # noqa: F821, UP037
    """Seconds per optimizer step from a run's metrics, leaving out the first step (warm-up, first
    shard read): t_n = pairs_n / pairs_per_s_n is the time from the loop's start to the end of step n."""
    import json

    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    t = [r["step"] * batch_size / r["pairs_per_s"] for r in rows]
    if len(t) < 2:
        return t[-1]
    return (t[-1] - t[0]) / (len(t) - 1)


def _bare_batches(family, folder, cfg, sampler, schedule, count: int) -> list:
    """The inputs of ``count`` optimizer steps of run_train (d3po): the same pairs in the same order,
    the same steps per pair, the same latents and conditioning, prepared ahead (not timed)."""
    from prefkit.sampling import encode
    from prefkit.shards import read_manifest
    from prefkit.training.engine import epoch_order, seeded_generator
    from prefkit.training.trajectories import ShardCache, load_train_pairs

    pairs, _ = load_train_pairs(folder, cfg.labels, read_manifest(folder)["plan"]["groups_per_shard"])
    B, K = cfg.batch_size, schedule.num_steps
    n = max(1, int(K * cfg.timestep_fraction))
    epoch_len = max(B, len(pairs) - len(pairs) % B)
    cache, out = ShardCache(folder), []
    for m in range(count):
        epoch, pos = divmod(m * B, epoch_len)
        order = epoch_order(pairs, cfg.seed, epoch)
        batch = [order[(pos + i) % len(order)] for i in range(B)]
        steps = []
        for i in range(B):
            g = seeded_generator(cfg.seed, epoch, pos + i)
            steps.append(torch.randperm(K, generator=g)[:n])
        steps_t = torch.stack(steps)
        both = [cache.get(p.shard, p.key_w) for p in batch] + [cache.get(p.shard, p.key_l) for p in batch]
        chains = torch.stack([s["latents"] for s in both]).float()
        cond = encode(family, [s["record"]["prompt"] for s in both], sampler)
        xs = []
        for j in range(n):
            k = torch.cat([steps_t[:, j], steps_t[:, j]])
            xs.append((chains[torch.arange(2 * B), k].to(family.device), k))
        out.append((xs, cond))
    return out


def _bare_step(family, schedule, sampler, batch, optimizer, reference=None) -> None:
    """One optimizer step of the bare loop: per trained step, the LoRA policy's forward (with CFG, as
    in training) and backward of a plain scalar of its output; then AdamW. With ``reference`` (a deep
    copy of the denoiser, as D3PO keeps), that copy's forward runs first under no_grad."""
    xs, cond = batch
    for x, k in xs:
        if reference is not None:
            with family.using(reference), torch.no_grad():
                family.model_output(x, k, schedule, cond, sampler.guidance)
        out = family.model_output(x, k, schedule, cond, sampler.guidance)
        (out.float().mean() / len(xs)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _bare_setup(folder, cfg, device: str, deep_copy: bool = False):
    """The policy as run_train builds it (same pipeline, dtype, LoRA, seed, AdamW), without Accelerate."""
    import copy

    from prefkit.families import DTYPES, family_of, load_pipeline
    from prefkit.sampling import SamplerSettings
    from prefkit.shards import read_manifest
    from prefkit.training.config import resolve
    from prefkit.training.lora import add_lora

    cfg = resolve(cfg)
    s = read_manifest(folder)["settings"]
    pipe = load_pipeline(s["model"], s["revision"], DTYPES[s["dtype"]], torch.device(device))
    family = family_of(pipe)
    noise = s[family.noise_flag]
    sampler = SamplerSettings(s["steps"], s["guidance"], noise, s["height"], s["width"], s["negative_prompt"])
    schedule = family.schedule(sampler.steps, sampler.height, sampler.width)
    reference = None
    if deep_copy:
        reference = copy.deepcopy(family.denoiser).requires_grad_(False).eval()
    torch.manual_seed(cfg.seed)
    add_lora(family.denoiser, cfg, family)
    params = [p for p in family.denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )
    return family, sampler, schedule, optimizer, reference, cfg


def _make_dataset(
    folder,
    model: str,
    steps: int,
    prompts: int,
    guidance: float = 5.0,
    dtype: str = "auto",
    height: int | None = None,
    width: int | None = None,
) -> None:
    from prefkit.config import GenerateConfig, LabelConfig
    from prefkit.generate import run_generate
    from prefkit.label import run_label

    names = [f"a photo of object {i}" for i in range(prompts)]
    cfg = GenerateConfig(
        out=str(folder), model=model, prompt=names, steps=steps, guidance=guidance, dtype=dtype,
        height=height, width=width, quiet=True,
    )  # fmt: skip
    run_generate(cfg)
    run_label(LabelConfig(dataset=str(folder), source="jpeg", quiet=True))


def bench_train(
    model: str = "tiny-sd3",
    device: str = "cpu",
    steps: int = 10,
    batch_size: int = 2,
    repeats: int = 3,
    train_steps: int = 6,
    dtype: str = "auto",
    height: int | None = None,
    width: int | None = None,
) -> list[Figure | Skipped]:
    """Three figures from one dataset sampled by the model itself (``steps``-step trajectories), d3po,
    ``batch_size`` pairs per optimizer step. Each repeat runs, in turn: run_train --reference live,
    run_train --reference stored, the bare loop, and a read of the dataset.

    * train step (stored) vs the bare loop: run_train's time per step (from its metrics, first step
      left out) against the bare loop's (warm-up step, then the mean of the other steps): the LoRA
      policy's forward and backward only, on the same latents, steps and conditioning, same AdamW.
    * stored vs live (expected near 1/1.5: one forward pass fewer per step).
    * shard read throughput: samples/s that ShardCache loads (tar read, npy decode of latents and
      log-probs, json) against the samples/s the stored run consumes (2 x pairs per step / step time).

    ``--reference stored`` stands in for a recomputation only in float32 (prefkit/training/stored.py);
    in a lower precision train uses the live reference instead, so below float32 (known from the
    dataset's dtype, before anything runs) the two stored figures are reported as not measured, with that
    reason; the live step time is reported next to the bare loop for scale, and read throughput is taken
    against the live run's consumption.
    """
    import tempfile
    from pathlib import Path

    from prefkit.errors import PrefkitError
    from prefkit.training.config import TrainConfig
    from prefkit.training.run import run_train
    from prefkit.training.trajectories import ShardCache

    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "ds"
        _make_dataset(ds, model, steps, 4, dtype=dtype, height=height, width=width)
        size = "{height} x {width} px".format(**_read_settings(ds))

        def cfg_for(ref: str, out: str) -> TrainConfig:
            return TrainConfig(
                dataset=str(ds), out=out, reference=ref, max_steps=train_steps, batch_size=batch_size,
                checkpoint_every=0, quiet=True,
            )  # fmt: skip

        family, sampler, schedule, optimizer, _, cfg = _bare_setup(ds, cfg_for("stored", "-"), device)
        batches = _bare_batches(family, ds, cfg, sampler, schedule, train_steps)
        from prefkit.shards import finished_shards, shard_index

        shards = [shard_index(p) for p in finished_shards(ds)]

        def read_all() -> int:
            cache, n = ShardCache(ds), 0
            for j in shards:
                with contextlib.suppress(PrefkitError):
                    cache.get(j, "")  # loads the whole shard (npy decoded); the key does not matter
                n += len(cache.samples)
            return n

        times: dict[str, list[float]] = {"live": [], "stored": [], "bare": [], "read": []}
        refused = ""
        from prefkit.training.stored import compute_precision

        precision = compute_precision(_read_settings(ds)["dtype"], "no", torch.device(device))
        if precision != "float32":  # known before running it: stored lp stand in only in float32
            refused = f"--reference stored trains live in {precision} (prefkit/training/stored.py)"
        for r in range(repeats):
            for ref in ("live", "stored"):
                if ref == "stored" and refused:
                    continue
                out = Path(tmp) / f"{ref}-{r}"
                try:
                    run_train(cfg_for(ref, str(out)))
                except PrefkitError as exc:
                    # train refuses stored log-probs that are not the model's own (beyond rounding)
                    if ref != "stored" or "--reference stored refused" not in str(exc):
                        raise
                    refused = str(exc)
                    continue
                summary = json.loads((out / "summary.json").read_text())
                if summary["reference"] != ref:
                    # below float32 train replaces --reference stored by live (prefkit/training/stored.py): no
                    # stored figure to take
                    refused = f"--reference stored trains live in {summary['stored_lp_check']['precision']}"
                    continue
                times[ref].append(_per_step_s(out / "metrics.jsonl", batch_size))
            _bare_step(family, schedule, sampler, batches[0], optimizer)  # warm-up
            bare = [
                timed(lambda b=b: _bare_step(family, schedule, sampler, b, optimizer), device)
                for b in batches[1:]
            ]
            times["bare"].append(sum(bare) / len(bare))
            n, t0 = 0, time.perf_counter()
            while True:  # at least 0.25 s of reading, for a stable rate
                n += read_all()
                if time.perf_counter() - t0 > 0.25:
                    break
            times["read"].append(n / (time.perf_counter() - t0))
    what = f"{_model_tag(model)}, {size}, {steps}-step trajectories, batch {batch_size}"
    consumer = "live" if refused else "stored"
    consumed = [2 * batch_size / s for s in times[consumer]]
    read = Figure(
        "shard read throughput (ShardCache, npy decoded)",
        times["read"],
        consumed,
        10.0,
        unit="samples/s",
        baseline=f"samples consumed by train --reference {consumer}",
        quantity="samples/s",
        at_least=True,
    )
    if refused:
        why = f"not measured: {refused}"
        return [
            Skipped(f"train step, --reference stored ({what})", why, 1.10),
            Skipped(f"train step, --reference stored vs live ({what}); expected ~1/1.5", why),
            Figure(
                f"train step, --reference live ({what}), for scale",
                [1000 * s for s in times["live"]],
                [1000 * s for s in times["bare"]],
                None,
                unit="optimizer step",
                baseline="bare loop: LoRA policy forward + backward + AdamW",
            ),
            read,
        ]
    return [
        Figure(
            f"train step, --reference stored ({what})",
            [1000 * s for s in times["stored"]],
            [1000 * s for s in times["bare"]],
            1.10,
            unit="optimizer step",
            baseline="bare loop: LoRA policy forward + backward + AdamW",
        ),
        Figure(
            f"train step, --reference stored vs live ({what}); expected ~1/1.5",
            [1000 * s for s in times["stored"]],
            [1000 * s for s in times["live"]],
            None,
            unit="optimizer step",
            baseline="--reference live",
        ),
        read,
    ]


# -- memory -------------------------------------------------------------------------------------------

MEMORY_MODES = ("floor", "none", "adapters", "deepcopy")
SMALL_DENOISER_BYTES = 64 * 2**20


def _denoiser_bytes(model: str) -> float:
    """Bytes of the denoiser's weight files of a local (or built-in) model; inf for a Hub id (unknown
    without downloading, and Hub models are not tiny)."""
    from pathlib import Path

    from prefkit.families import resolve_model

    folder = Path(resolve_model(model)).expanduser()
    if not folder.is_dir():
        return float("inf")
    files = [f for sub in ("unet", "transformer") for f in (folder / sub).glob("*.safetensors")]
    return sum(f.stat().st_size for f in files) if files else float("inf")


def build_memory_model(path, layers: int = 6, heads: int = 6, seed: int = 0) -> str:
    """tiny-sd3 with a bigger transformer (``layers`` joint blocks, ``heads`` x 64 wide; random
    weights): its parameters are most of the training process's memory, so a second copy shows."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from prefkit.models.parts import build_model_folder
    from prefkit.models.tiny import make_sd3

    def make(s: int):
        pipe = make_sd3(s)
        cfg = dict(pipe.transformer.config)
        torch.manual_seed(s)
        width = heads * 64
        transformer = SD3Transformer2DModel(
            sample_size=cfg["sample_size"], patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
            out_channels=cfg["out_channels"], num_layers=layers, attention_head_dim=64,
            num_attention_heads=heads, joint_attention_dim=cfg["joint_attention_dim"],
            caption_projection_dim=width, pooled_projection_dim=cfg["pooled_projection_dim"],
            pos_embed_max_size=cfg["pos_embed_max_size"],
        )  # fmt: skip
        parts = {k: v for k, v in pipe.components.items()}
        parts["transformer"] = transformer
        return StableDiffusion3Pipeline(**parts)

    return build_model_folder(make, path, seed)


def _memory_child(mode: str, folder: str, device: str, out: str) -> int:
    """Run one configuration in this (fresh) process; print its peak memory in bytes during the
    optimizer steps (prefkit.memory: the high-water mark restarts when the steps begin, so loading's
    peak is left out, and printed apart as ``load``): peak RSS on the CPU (the whole process:
    interpreter, libraries, weights, activations), max_memory_allocated on CUDA (tensors only). The
    floor imports the same libraries and restarts its peak as well."""
    import json
    from pathlib import Path

    import accelerate  # noqa: F401 - every mode pays for the same imports
    import diffusers  # noqa: F401
    import peft  # noqa: F401

    from prefkit.memory import PhasePeak, peak_bytes
    from prefkit.training.config import TrainConfig
    from prefkit.training.run import run_train

    cfg = TrainConfig(
        dataset=folder, out=out, reference="live", max_steps=2, batch_size=1, checkpoint_every=0, quiet=True
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    row: dict[str, Any] = {"mode": mode}
    phase = PhasePeak(device)
    if mode == "adapters":
        run_train(cfg)
        memory = json.loads((Path(out) / "summary.json").read_text())["memory"]
        row.update(load=memory["before_mib"] * 2**20, peak=memory["during_mib"] * 2**20)
    elif mode in ("none", "deepcopy"):
        family, sampler, schedule, optimizer, reference, cfg = _bare_setup(
            Path(folder), cfg, device, deep_copy=mode == "deepcopy"
        )
        batches = _bare_batches(family, Path(folder), cfg, sampler, schedule, cfg.max_steps)
        phase.start()  # as train_loop does
        for b in batches:
            _bare_step(family, schedule, sampler, b, optimizer, reference)
        base = [p for n, p in family.denoiser.named_parameters() if "lora_" not in n]
        row["weights"] = sum(p.numel() * p.element_size() for p in base)  # bytes, the adapters left out
        row["denoiser"] = type(family.denoiser).__name__
        row.update(load=phase.before, peak=peak_bytes(device))
    else:  # the floor
        phase.start()
        row.update(load=phase.before, peak=peak_bytes(device))
    print(json.dumps(row))
    return 0


def bench_memory(
    device: str = "cpu",
    repeats: int = 3,
    layers: int = 6,
    heads: int = 6,
    model: str | None = None,
    dtype: str = "auto",
    height: int | None = None,
    width: int | None = None,
) -> list[Figure]:
    """Peak memory of training (run_train, --reference live: the reference is the adapters-off
    network) against a loop that has no reference at all, and a loop that keeps a deep copy of the
    denoiser as the reference (D3PO). Every configuration runs in a fresh process on the same dataset
    (2-step trajectories, 1 pair per step, 2 steps, no CFG). The peak is that of the optimizer steps:
    each process restarts its high-water mark when they begin (prefkit.memory), so loading the model
    (on the CPU: the mapped weight files and their aligned copies at once) is left out. On the CPU the
    figure is that peak RSS minus the "floor" (a process that imports the same libraries and does
    nothing else); on CUDA it is torch.cuda.max_memory_allocated.

    The model: ``model`` itself, except when it is ``None`` or a local model whose denoiser weighs
    less than ``SMALL_DENOISER_BYTES`` (the tiny ones): a second copy of it would not show next to the
    libraries, so ``build_memory_model`` (tiny-sd3 with a ``layers`` x ``heads`` * 64 transformer) is
    measured instead. The small model's
    configurations run side by side (OMP_NUM_THREADS=1 on the CPU); any other model's run one after
    another, so that a real-size model is in memory once at a time."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    small = model is None or _denoiser_bytes(model) < SMALL_DENOISER_BYTES
    with tempfile.TemporaryDirectory() as tmp:
        if small:
            model = build_memory_model(Path(tmp) / "model", layers, heads)
        ds = Path(tmp) / "ds"
        _make_dataset(ds, model, 2, 2, guidance=1.0, dtype=dtype, height=height, width=width)
        env = dict(os.environ)
        if device == "cpu" and small:
            env["OMP_NUM_THREADS"] = "1"  # the configurations run side by side; threads do not change memory
        peaks: dict[str, list[float]] = {m: [] for m in MEMORY_MODES}
        extra: dict[str, list] = {"weights": [], "denoiser": []}

        def start(m: str, r: int) -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, "-m", "prefkit.bench", "_memory", m, str(ds), device, f"{tmp}/{m}-{r}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )

        def finish(m: str, p: subprocess.Popen) -> None:
            stdout, stderr = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"bench memory ({m}) failed:\n{stderr[-3000:]}")
            row = json.loads(stdout.strip().splitlines()[-1])
            peaks[m].append(row["peak"])
            if m == "none":
                extra["weights"].append(row["weights"])
                extra["denoiser"].append(row["denoiser"])

        for r in range(repeats):
            if small:
                procs = {m: start(m, r) for m in MEMORY_MODES}
                for m, p in procs.items():
                    finish(m, p)
            else:
                for m in MEMORY_MODES:
                    finish(m, start(m, r))
        settings = _read_settings(ds)
    weights = statistics.median(extra["weights"]) / 2**20
    kind = extra["denoiser"][0]
    floor = peaks["floor"] if device == "cpu" else [0.0] * repeats
    mib = {m: [(p - f) / 2**20 for p, f in zip(peaks[m], floor, strict=True)] for m in MEMORY_MODES}
    name = f"SD3 transformer {layers} x {heads * 64} wide" if small else f"{_model_tag(model)} {kind}"
    size = "{height} x {width} px".format(**settings)
    what = f"{name}, {weights:.0f} MiB of {settings['dtype']} weights, {size}"
    how = "optimizer steps' peak RSS over the import floor" if device == "cpu" else "max_memory_allocated"
    return [
        Figure(
            f"peak memory, train (reference = adapters off) ({what}; {how})",
            mib["adapters"],
            mib["none"],
            1.05,
            unit="training run",
            baseline="no reference at all",
            quantity="MiB",
        ),
        Figure(
            f"peak memory, train (reference = adapters off) vs a deep copy as reference (D3PO) ({what})",
            mib["adapters"],
            mib["deepcopy"],
            None,
            unit="training run",
            baseline="deep copy of the denoiser",
            quantity="MiB",
        ),
    ]


# -- output -------------------------------------------------------------------------------------------


def print_figures(figures: list[Figure | Skipped]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="prefkit bench (ratios measured in the same run)")
    for col in (
        "figure",
        "per",
        "measured",
        "baseline",
        "baseline measured",
        "ratio (median)",
        "min..max",
        "target",
    ):
        table.add_column(col, overflow="fold")
    for f in figures:
        s = f.summary()
        if "skipped" in s:
            target = "" if s["target"] is None else f"{s['target']} (not measured)"
            table.add_row(s["figure"], "", s["skipped"], "", "", "", "", target)
            continue
        target = "" if s["target"] is None else f"{s['target_op']} {s['target']}"
        if s["meets_target"] is not None:
            target += " ok" if s["meets_target"] else " MISSED"
        table.add_row(
            s["figure"],
            s["unit"],
            f"{s['measured']:.4g} {s['quantity']}",
            s["baseline"],
            f"{s['baseline_measured']:.4g} {s['quantity']}",
            f"{s['ratio_median']:.3f}",
            f"{s['ratio_min']:.3f}..{s['ratio_max']:.3f}",
            target,
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    console.print(table)


def run_bench(
    what: str = "all",
    model: str = "tiny-sd3",
    device: str = "cpu",
    steps: int = 20,
    batch_size: int = 8,
    repeats: int = 5,
    dtype: str = "auto",
    height: int | None = None,
    width: int | None = None,
) -> list[Figure | Skipped]:
    """generate: generation overhead and bytes on disk; train: step cost vs the bare loop, stored vs
    live, shard read throughput, peak memory. Training uses ``max(2, steps // 2)``-step trajectories
    and ``max(1, batch_size // 4)`` pairs per step. ``dtype`` (auto: float32 on the CPU, bfloat16 on
    CUDA), ``height`` and ``width`` (default: the model's native size) apply to the model under test;
    bytes on disk are always measured on tiny-sd15 at 4 x 64 x 64 latents (see bench_storage)."""
    figures: list[Figure | Skipped] = []
    size = {"dtype": dtype, "height": height, "width": width}
    if what in ("generate", "all"):
        figures.append(bench_generate(model, device, steps, batch_size, repeats, **size))
        figures += bench_storage(steps, repeats)
    if what in ("train", "all"):
        figures += bench_train(model, device, max(2, steps // 2), max(1, batch_size // 4), repeats, **size)
        figures += bench_memory(device, repeats, model=model, **size)
    return figures


# -- the GPU run ----------------------------------------------------------------------------------------

# What `prefkit bench gpu` measures on a CUDA device: the real-size random-weight models in bfloat16 at
# their usual sizes (an 80-141 GB GPU holds each, with a deep-copied reference for the memory figure).
# qwen-image-random (a 20 B transformer, 41 GB in bfloat16, 82 GB with the deep copy) is left out: its
# training figures at 1024 px would not fit beside a deep copy on one 80 GB GPU.
GPU_PLAN = (
    {"model": "sd15-random", "height": 512, "width": 512, "steps": 20, "batch_size": 4},
    {"model": "sd3-medium-random", "height": 1024, "width": 1024, "steps": 28, "batch_size": 2},
    {"model": "sdxl-random", "height": 1024, "width": 1024, "steps": 30, "batch_size": 2},
)
# --dry-run: the same code on the CPU with the tiny models of the same families, so it cannot rot.
DRY_PLAN = (
    {"model": "tiny-sd15", "height": 32, "width": 32, "steps": 2, "batch_size": 2},
    {"model": "tiny-sd3", "height": 32, "width": 32, "steps": 2, "batch_size": 2},
    {"model": "tiny-sdxl", "height": 32, "width": 32, "steps": 2, "batch_size": 2},
)


def environment(device: str) -> dict[str, Any]:
    """What a figure depends on: date, device, library versions, the commit measured."""
    from prefkit.environment import environment as describe

    return describe(device)


def run_gpu_bench(dry_run: bool = False, repeats: int = 3, on_figures=None) -> dict[str, Any]:
    """Every figure of ``run_bench("all")`` for each model of GPU_PLAN on CUDA in bfloat16 (``dry_run``:
    DRY_PLAN on the CPU, 1 repeat), with the environment; ``on_figures(entry, figures)`` after each model."""
    from prefkit.errors import PrefkitError

    if not dry_run and not torch.cuda.is_available():
        raise PrefkitError(
            "bench gpu: no CUDA device here; `prefkit bench gpu --dry-run` runs the same code on the CPU "
            "at tiny size"
        )
    device, plan = ("cpu", DRY_PLAN) if dry_run else ("cuda", GPU_PLAN)
    report: dict[str, Any] = {"environment": environment(device), "dry_run": dry_run, "runs": []}
    for entry in plan:
        figures = run_bench(
            "all", entry["model"], device, entry["steps"], entry["batch_size"],
            1 if dry_run else repeats, "bfloat16", entry["height"], entry["width"],
        )  # fmt: skip
        report["runs"].append({**entry, "dtype": "bfloat16", "figures": [f.summary() for f in figures]})
        if on_figures is not None:
            on_figures(entry, figures)
    return report


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 6 and sys.argv[1] == "_memory":
        sys.exit(_memory_child(*sys.argv[2:]))
    sys.exit("usage: python -m prefkit.bench _memory MODE DATASET DEVICE OUT (internal; use `prefkit bench`)")
