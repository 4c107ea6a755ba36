"""``prefkit train --objective diffusion-dpo``: Diffusion-DPO on pairs of final images (docs/math.md section 7).

Input: any dataset ``datasets.load_dataset`` reads in Pick-a-Pic format -- caption, jpg_0, jpg_1 (raw
image bytes), label_0 (P(jpg_0 wins): > 0.5 jpg_0 won, 0.5 a tie) -- a folder published by ``prefkit
publish`` (its default config, ``train`` split), a parquet file, or a Hub id. Ties are dropped and counted.

Per micro-batch of B pairs: the JPEGs are decoded, resized and centre-cropped (``pipe.image_processor``),
encoded with the VAE (``latent_dist.mode()``, then SD3/FLUX's (z - shift) * scale, SD's z * scale); one
(t, e) per pair, seeded by (seed, epoch, position) and shared by winner and loser; conditional only (no
CFG). The squared errors, mean-reduced per sample, of the policy (LoRA, with gradient, through the DDP
-prepared net) and of the reference (adapters off, no gradient) go into ``diffusion_dpo_loss``:

  eps families (SD 1.x/2.x): t ~ U{0..T-1}, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e, target e. A
      v-prediction model's output is converted to eps (``Family.model_output``), so its error is an
      eps error too.
  flow families (SD3, FLUX): s ~ logit-normal(0, 1), x_s = (1 - s) x0 + s e, target v = e - x0; the
      denoiser's timestep input is s * 1000 (FLUX: s).

beta defaults to 5000 (eps) or 100 (flow). Everything else -- LoRA, reference, optimizer, schedule,
checkpoints, resume, metrics, NaN stop, accelerate -- is ``prefkit.train``'s machinery.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefkit.config import TrainConfig
from prefkit.errors import PrefkitError
from prefkit.math.losses import (
    diffusion_dpo_loss,
    eps_noising,
    flow_noising,
    logit_normal_sigmas,
    soft_label_weight,
)
from prefkit.train_engine import (
    _offline,
    begin_outputs,
    check_finite,
    check_out,
    finish_run,
    reference_mode,
    resolve,
    seeded_generator,
    setup_run,
    start_accelerator,
    sync_context,
    train_loop,
)

COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
BETA = {"ddim": 5000.0, "sd3": 100.0, "flux": 100.0}
# FLUX.1-dev takes the guidance scale as an input (no CFG pass); its usual training value
FLUX_EMBEDDED_GUIDANCE = 3.5


@dataclass
class ImagePair:
    """One decided pair: its row in the dataset, whether jpg_0 won, and its weight |2 label_0 - 1|."""

    row: int
    first_won: bool
    weight: float
    pair_id: str
    shard: int = 0  # one "shard": the dataset is read row by row (epoch_order shuffles all pairs)


def _published_manifest(spec: str) -> dict | None:
    path = Path(spec).expanduser() / "trajectories" / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_image_dataset(spec: str):
    """The ``train`` split (or the only split) of a Pick-a-Pic-format dataset, columns checked."""
    import datasets

    path = Path(spec).expanduser()
    try:
        if path.is_file():
            kind = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(path.suffix)
            if kind is None:
                raise PrefkitError(f"DATASET {spec}: a file must be .parquet, .json(l) or .csv")
            loaded = datasets.load_dataset(kind, data_files=str(path))
        else:
            loaded = datasets.load_dataset(str(path) if path.exists() else spec)
    except PrefkitError:
        raise
    except Exception as exc:  # offline, not found, unreadable: one clear message, no stack trace
        hint = ""
        if not path.exists():
            hint = (
                " (no such local file or folder; as a Hub id it needs the network"
                + (", and HF_HUB_OFFLINE=1 is set" if _offline() else "")
                + ")"
            )
        raise PrefkitError(
            f"DATASET {spec}: could not be loaded with datasets.load_dataset{hint}: {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise PrefkitError(f"DATASET {spec}: no train split (splits: {', '.join(loaded)})")
    missing = [c for c in COLUMNS if c not in loaded.column_names]
    if missing:
        raise PrefkitError(
            f"DATASET {spec}: not in Pick-a-Pic format; missing column(s) {', '.join(missing)} "
            f"(has {', '.join(loaded.column_names)})"
        )
    # raw bytes, never decoded by datasets (an Image feature is read back as {"bytes", "path"})
    for c in ("jpg_0", "jpg_1"):
        if isinstance(loaded.features[c], datasets.Image):
            loaded = loaded.cast_column(c, datasets.Image(decode=False))
    return loaded


def image_pairs(ds, spec: str) -> tuple[list[ImagePair], dict]:
    """Decided pairs (ties, label_0 == 0.5, dropped and counted) in row order."""
    pairs, ties, unlabelled = [], 0, 0
    for i, label in enumerate(ds["label_0"]):
        if label is None:
            unlabelled += 1
            continue
        label = float(label)
        weight = soft_label_weight(label)
        if weight == 0:
            ties += 1
            continue
        pairs.append(ImagePair(i, label > 0.5, weight, f"row-{i}"))
    if not pairs:
        raise PrefkitError(f"DATASET {spec}: no decided pair to train on ({ties} ties dropped)")
    return pairs, {"pairs": len(pairs), "ties_skipped": ties, "unlabelled_skipped": unlabelled}


def _image(value):
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    if hasattr(value, "convert"):
        return value.convert("RGB")
    raise PrefkitError(f"an image column holds {type(value).__name__}, not image bytes")


def encode_images(family, images: list, size: int) -> torch.Tensor:
    """PIL images -> VAE latents [N, C, h, w] in float32 (mode of the posterior, scaled/shifted)."""
    pipe = family.pipe
    vae = pipe.vae
    px = pipe.image_processor.preprocess(images, height=size, width=size, resize_mode="crop")
    with torch.no_grad():
        z = vae.encode(px.to(family.device, vae.dtype)).latent_dist.mode().float()
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z - shift
    return z * vae.config.scaling_factor


def run_image_train(cfg: TrainConfig) -> dict[str, Any]:
    """Diffusion-DPO on ``cfg.dataset``; returns the final metrics record plus the pair counts."""
    from prefkit.families import DTYPES, family_of, load_pipeline

    cfg = resolve(cfg)
    if cfg.reference != "live":
        raise PrefkitError("--reference stored: diffusion-dpo has no stored log-probs; use --reference live")
    if cfg.negative_prompt is not None:
        raise PrefkitError("--negative-prompt: diffusion-dpo trains conditional predictions only (no CFG)")
    out = Path(cfg.out).expanduser()
    manifest = _published_manifest(cfg.dataset)
    model, load_from, revision, dtype = cfg.model, cfg.model, None, "float32"
    if manifest is not None:
        settings, info = manifest.get("settings", {}), manifest.get("model", {})
        if model is None:
            model = settings.get("model") or info.get("id")
            load_from = model
            local = info.get("path")
            if local and Path(local).is_dir():
                load_from = local
            revision = settings.get("revision")
        dtype = settings.get("dtype", dtype) if cfg.model is None else dtype
    if model is None:
        raise PrefkitError(
            "--model is required for diffusion-dpo: the base model to train a LoRA on (the dataset names none)"
        )
    ds = load_image_dataset(cfg.dataset)
    pairs, label_info = image_pairs(ds, cfg.dataset)

    accelerator = start_accelerator(cfg, out)
    pipe = load_pipeline(load_from, revision, DTYPES.get(dtype, torch.float32), accelerator.device, False)
    family = family_of(pipe)
    if cfg.beta is None:
        cfg = dataclasses.replace(cfg, beta=BETA[family.name])
    check_out(out, cfg)
    size = cfg.resolution or family.default_size()[0]
    family.check_size(size, size)
    if family.name == "ddim":
        # DDPM training noise: alphas_cumprod of the scheduler's config (DDIMFamily keeps the betas)
        alphas_cumprod = pipe.scheduler.alphas_cumprod.float()
        num_train = pipe.scheduler.config.num_train_timesteps
    guidance = FLUX_EMBEDDED_GUIDANCE if cfg.guidance is None else cfg.guidance

    run = setup_run(cfg, out, accelerator, pipe, family)
    begin_outputs(run)
    denoiser, net = run.denoiser, run.net
    scale = 1.0 / cfg.grad_accum

    def step(batch, sync: bool) -> dict:
        from prefkit.families import Schedule

        B = len(batch)
        dev = family.device
        rows = [ds[p.row] for p, _, _ in batch]
        first = [_image(r["jpg_0"]) for r in rows]
        second = [_image(r["jpg_1"]) for r in rows]
        win = [a if p.first_won else b for (p, _, _), a, b in zip(batch, first, second, strict=True)]
        lose = [b if p.first_won else a for (p, _, _), a, b in zip(batch, first, second, strict=True)]
        x0 = encode_images(family, win + lose, size)  # [2B, C, h, w]: winners, then losers
        captions = [r["caption"] or "" for r in rows]
        cond = family.encode(captions + captions, None)  # conditional only
        # the same (t, e) for winner and loser, seeded by (seed, epoch, position)
        noise, draws = [], []
        for _, epoch, position in batch:
            g = seeded_generator(cfg.seed, epoch, position)
            if family.name == "ddim":
                draws.append(torch.randint(0, num_train, (1,), generator=g))
            else:
                draws.append(logit_normal_sigmas(1, g))
            noise.append(torch.randn(x0.shape[1:], generator=g))
        d = torch.cat(draws)
        e = torch.stack(noise).to(dev)
        e, d = torch.cat([e, e]), torch.cat([d, d])
        if family.name == "ddim":
            a = alphas_cumprod[d]
            x_t = eps_noising(x0, e, a.to(dev))
            target = e
            schedule = Schedule(timesteps=d.long(), alphas=a.to(dev))
        else:
            x_t, target = flow_noising(x0, e, d.to(dev))
            schedule = Schedule(timesteps=d.float() * 1000)
        k = torch.arange(2 * B)
        pair_w = torch.tensor([p.weight for p, _, _ in batch], device=dev)

        def errors() -> torch.Tensor:
            with accelerator.autocast():
                pred = family.model_output(x_t, k, schedule, cond, guidance)
            return (pred.float() - target).pow(2).mean(dim=tuple(range(1, target.ndim)))  # [2B]

        with torch.no_grad(), reference_mode(denoiser):
            ref = errors()
        with sync_context(accelerator, net, sync):
            err = errors()
            res = diffusion_dpo_loss(err[:B], ref[:B], err[B:], ref[B:], cfg.beta, pair_w)
            check_finite(res.loss, accelerator)
            accelerator.backward(res.loss * scale)
        return {
            "loss": res.loss.item(),
            "accuracy": float((res.logits > 0).float().mean()),
            "err_diff_w": (err[:B] - ref[:B]).mean().item(),
            "err_diff_l": (err[B:] - ref[B:]).mean().item(),
            "ref_err_w": ref[:B].mean().item(),
            "ref_err_l": ref[B:].mean().item(),
        }

    last = train_loop(run, pairs, step)
    recent = finish_run(
        run,
        {
            "final": last,
            "labels": label_info,
            "dataset": str(cfg.dataset),
            "model": model,
            "reference": "live",
            "objective": "diffusion-dpo",
            "beta": cfg.beta,
            "resolution": size,
        },
    )
    return {**last, **label_info, "recent": recent}
