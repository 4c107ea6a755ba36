"""Build ``tiny-shapes``: a tiny SD3-style text-to-image model that draws the coloured shapes it is asked for.

Everything is made here, from a seed, on a CPU; nothing is downloaded::

    python -m prefkit.models.shapes_model data/models/tiny-shapes --seed 0

1. Tokenizers: the project's offline CLIP BPE and T5 Unigram tokenizers (prefkit.models.tiny) over the
   shapes words (prefkit.shapes.WORDS) plus the tiny models' common words; captions are padded to 16
   tokens (a caption of the grammar has at most 13).
2. Text encoders: two CLIP text encoders with projection and a one-layer T5 encoder, randomly initialised
   from the seed and kept frozen. They are not trained: their outputs already tell the words and their
   order apart, and the denoiser learns to read them (freezing them lets every caption be encoded once).
   By default (``--pooled 0``) the CLIP projections are zero, so the pooled embedding that SD3 feeds to
   every block's modulation is the same for every caption and the words reach the denoiser only through
   joint attention over the token sequence. Measured (48 held-out captions, same settings otherwise):
   with the pooled embedding the model draws held-out colour-shape combinations in the colour of a
   combination it was trained on (right colour 0.77 held out vs 0.98 on training captions); without it
   0.90 vs 0.96. A pooled embedding mixes the whole caption into one vector, and an unseen mixture is
   read as the nearest seen one; the token sequence keeps the colour word and the shape word apart.
3. VAE: an AutoencoderKL (downscale 2: 32 px pictures <-> 16 x 16 x 4 latents) trained on drawn
   pictures to reconstruct them (MSE + a small KL term). Its latents' mean and standard deviation become
   the pipeline's ``shift_factor`` and ``scaling_factor``, as SD3's VAE does.
4. Denoiser: an SD3Transformer2DModel (joint attention over the text and 8 x 8 patches of 2 x 2 latent pixels) trained by
   rectified flow (x_t = (1 - s) x_0 + s e, target e - x_0, s ~ logit-normal(0, 1) as in SD3) on drawn
   pictures and their captions (10 % of captions dropped to the empty prompt, for classifier-free
   guidance), with AdamW, warm-up, cosine decay and an EMA of the weights (the EMA is what is saved).
   Colour-shape combinations in prefkit.shapes.HELD_OUT are never drawn. Shapes are drawn at their
   canonical place (``--jitter 0``: the middle, or near the named edge; prefkit.shapes.canonical_centre):
   with centres anywhere, the same budget learned colours and places but drew every shape as a blob
   (shape right 0.27 held out); at fixed places it learns the outlines (0.48 -> 0.90 on training captions
   as the transformer grows from 64 to 128 wide). The judge still accepts a shape anywhere.
``--family sd15`` builds the SD-1.5-style variant instead: the same tokenizer and VAE, one CLIP text
encoder, a small UNet2DConditionModel (cross-attention) trained on DDPM's epsilon objective with SD-1.5's
scaled-linear betas, and DDIM for sampling (no VAE shift: SD-1.5 pipelines do not use one).

5. Check: pictures sampled with prefkit's own sampler (the settings ``prefkit generate`` uses by
   default) for held-out captions and for training captions are read back by the shapes judge
   (prefkit.shapes.analyse); the rates of right colour, shape and both are written to
   ``build_report.json`` beside the model, with the seed, the settings and the time of each phase.

The pipeline folder is written to a temporary sibling and renamed: an interrupted build leaves nothing.
Single-threaded determinism: the same seed on the same torch build gives the same weights; across
machines, float rounding in the kernels may differ in the last bits, and the measured quality is what
the report records (rebuilding gives the same quality, not necessarily the same bytes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefkit import shapes

#: Padded caption length of every tokenizer (the longest caption of the grammar has 13 tokens).
TEXT_LENGTH = 16


@dataclass
class BuildSettings:
    seed: int = 0
    side: int = 32
    vae_steps: int = 1000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl: float = 1e-4
    scenes: int = 20000
    steps: int = 10000
    latent_channels: int = 4
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 200
    ema: float = 0.999
    caption_dropout: float = 0.1
    say_size: float = 0.5
    say_position: float = 0.3
    jitter: int = 0  # centres at most this many 2 px steps from the canonical place; -1: anywhere
    layers: int = 4
    patch: int = 2  # the transformer's patch side, in latent pixels
    vae_factor: int = 2  # the VAE's downscale: 1, 2 or 4
    heads: int = 8
    head_dim: int = 16
    shift: float = 1.0
    eval_samples: int = 96
    threads: int = 0  # 0: torch's default
    # 0: the CLIP projections are zero, so the pooled text embedding is the same for every caption
    pooled: int = 0
    family: str = "sd3"  # sd3 (flow matching, SD3Transformer2DModel) or sd15 (DDIM, UNet)


# -- pieces ---------------------------------------------------------------------------------------------


def _words() -> tuple[str, ...]:
    from prefkit.models.tiny import PROMPT_WORDS

    return tuple(dict.fromkeys(shapes.WORDS + PROMPT_WORDS))


def make_untrained(st: BuildSettings):
    """The pipeline with random weights: tokenizers, frozen text encoders, VAE, transformer, scheduler."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    from prefkit.models.parts import clip_tokenizer, t5_tokenizer
    from prefkit.models.tiny import clip_text_config, t5_encoder

    words = _words()
    tok, tok2 = clip_tokenizer(words, TEXT_LENGTH), clip_tokenizer(words, TEXT_LENGTH)
    tok3 = t5_tokenizer(words, TEXT_LENGTH)
    torch.manual_seed(st.seed * 1000 + 0)
    te = CLIPTextModelWithProjection(clip_text_config(tok, 32, 32))
    torch.manual_seed(st.seed * 1000 + 1)
    te2 = CLIPTextModelWithProjection(clip_text_config(tok2, 32, 32))
    torch.manual_seed(st.seed * 1000 + 2)
    te3 = t5_encoder(tok3, 64)
    torch.manual_seed(st.seed * 1000 + 3)
    width = st.heads * st.head_dim
    transformer = SD3Transformer2DModel(
        sample_size=st.side // st.vae_factor,
        patch_size=st.patch,
        in_channels=st.latent_channels,
        out_channels=st.latent_channels,
        num_layers=st.layers,
        attention_head_dim=st.head_dim,
        num_attention_heads=st.heads,
        joint_attention_dim=64,
        caption_projection_dim=width,
        pooled_projection_dim=64,
        pos_embed_max_size=32,
    )
    torch.manual_seed(st.seed * 1000 + 4)
    blocks = {1: 1, 2: 2, 4: 3}[st.vae_factor]
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(16, 32, 32)[-blocks:],
        layers_per_block=1,
        latent_channels=st.latent_channels,
        norm_num_groups=8,
        sample_size=st.side,
        scaling_factor=1.0,
        shift_factor=0.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=st.shift)
    for module in (te, te2, te3):
        module.requires_grad_(False).eval()
    if not st.pooled:
        for module in (te, te2):
            module.text_projection.weight.data.zero_()
    if st.family == "sd15":
        return _sd15(st, tok, te, vae)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok2,
        text_encoder_3=te3,
        tokenizer_3=tok3,
    )


def _sd15(st: BuildSettings, tokenizer, text_encoder_with_projection, vae):
    """The SD-1.5-style variant: the same tokenizer and VAE, a CLIP text encoder, a small UNet, DDIM."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from prefkit.models.tiny import clip_text_config, sd15_pipeline

    torch.manual_seed(st.seed * 1000 + 5)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer, 32, 32)).requires_grad_(False).eval()
    torch.manual_seed(st.seed * 1000 + 6)
    width = st.heads * st.head_dim
    unet = UNet2DConditionModel(
        sample_size=st.side // st.vae_factor,
        in_channels=st.latent_channels,
        out_channels=st.latent_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(width // 2, width),
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae.register_to_config(shift_factor=None)
    return sd15_pipeline(vae, text_encoder, tokenizer, unet)


def _to_tensor(pictures: list[np.ndarray]):
    import torch

    x = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def _scenes(rng: np.random.Generator, count: int, st: BuildSettings, held_out: bool = False):
    """``count`` random scenes with captions (size and position said with the settings' probabilities)."""
    out = []
    for _ in range(count):
        position = str(rng.choice(shapes.POSITIONS)) if rng.random() < st.say_position else None
        jitter = None if st.jitter < 0 else st.jitter
        scene = shapes.random_scene(rng, held_out=held_out, position=position, jitter=jitter)
        cap = shapes.caption(scene, say_size=bool(rng.random() < st.say_size), position=position)
        out.append((scene, cap.text()))
    return out


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(pipe, st: BuildSettings, rng: np.random.Generator, log) -> tuple[float, float]:
    """Train the VAE; returns its latents' (shift, scale) = (mean, 1 / std) over fresh pictures."""
    import torch

    vae = pipe.vae
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=st.vae_lr, weight_decay=0.0)
    for step in range(st.vae_steps):
        for group in opt.param_groups:
            group["lr"] = st.vae_lr * _cosine(step, st.vae_steps, 50)
        x = _to_tensor([shapes.draw(s, st.side) for s, _ in _scenes(rng, st.vae_batch, st)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = torch.nn.functional.mse_loss(recon, x)
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        loss = rec + st.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == st.vae_steps - 1:
            log(f"vae {step:5d}/{st.vae_steps}  mse {rec.item():.5f}  kl {kl.item():.3f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        x = _to_tensor([shapes.draw(s, st.side) for s, _ in _scenes(rng, 512, st)])
        z = vae.encode(x).latent_dist.mean
    shift, scale = float(z.mean()), float(1.0 / z.std())
    return shift, scale


def encode_captions(pipe, captions: list[str]) -> dict[str, tuple[Any, Any]]:
    """Each distinct caption (and "") encoded once, exactly as prefkit's SD3 family encodes prompts."""
    import torch

    distinct = sorted(set(captions) | {""})
    table = {}
    with torch.no_grad():
        for i in range(0, len(distinct), 256):
            chunk = distinct[i : i + 256]
            if not hasattr(pipe, "transformer"):  # sd15: CLIP hidden states, no pooled projection
                pe, _ = pipe.encode_prompt(chunk, "cpu", 1, False)
                table.update({text: (pe[j], pe.new_zeros(1)) for j, text in enumerate(chunk)})
                continue
            pe, _, pooled, _ = pipe.encode_prompt(
                prompt=chunk,
                prompt_2=None,
                prompt_3=None,
                do_classifier_free_guidance=False,
                max_sequence_length=TEXT_LENGTH,
            )
            for j, text in enumerate(chunk):
                table[text] = (pe[j], pooled[j])
    return table


def train_denoiser(pipe, st: BuildSettings, rng: np.random.Generator, log) -> None:
    """Rectified-flow training of the transformer on encoded pictures; the EMA weights are kept."""
    import copy

    import torch

    sd15 = not hasattr(pipe, "transformer")
    vae, transformer = pipe.vae, (pipe.unet if sd15 else pipe.transformer)
    shift, scale = vae.config.shift_factor or 0.0, vae.config.scaling_factor
    alphas = pipe.scheduler.alphas_cumprod if sd15 else None
    data = _scenes(rng, st.scenes, st)
    latents = []
    with torch.no_grad():
        for i in range(0, len(data), 256):
            x = _to_tensor([shapes.draw(s, st.side) for s, _ in data[i : i + 256]])
            latents.append((vae.encode(x).latent_dist.mean - shift) * scale)
    latents = torch.cat(latents)
    table = encode_captions(pipe, [c for _, c in data])
    embeds = torch.stack([table[c][0] for _, c in data])
    pooled = torch.stack([table[c][1] for _, c in data])
    empty_e, empty_p = table[""]
    log(
        f"denoiser data: {len(data)} pictures, {len(table)} distinct captions, latent std {latents.std():.3f}"
    )

    transformer.train()
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=st.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(st.seed)
    running = None
    for step in range(st.steps):
        for group in opt.param_groups:
            group["lr"] = st.lr * _cosine(step, st.steps, st.warmup)
        idx = torch.randint(len(data), (st.batch,), generator=gen)
        x0, e, p = latents[idx], embeds[idx].clone(), pooled[idx].clone()
        drop = torch.rand(st.batch, generator=gen) < st.caption_dropout
        e[drop], p[drop] = empty_e, empty_p
        noise = torch.randn(x0.shape, generator=gen)
        if sd15:  # DDPM epsilon prediction, t uniform over the 1000 training steps
            t = torch.randint(1000, (st.batch,), generator=gen)
            ab = alphas[t][:, None, None, None]
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            pred = transformer(xt, t, encoder_hidden_states=e).sample
            loss = torch.nn.functional.mse_loss(pred, noise)
        else:
            sigma = torch.sigmoid(torch.randn(st.batch, generator=gen))
            s = sigma[:, None, None, None]
            xt = (1 - s) * x0 + s * noise
            pred = transformer(
                hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=e, pooled_projections=p
            ).sample
            loss = torch.nn.functional.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        decay = min(st.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pt in zip(ema.parameters(), transformer.parameters(), strict=True):
                pe.lerp_(pt, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == st.steps - 1:
            log(f"denoiser {step:5d}/{st.steps}  loss {running:.4f}")
    transformer.load_state_dict(ema.state_dict())
    transformer.eval().requires_grad_(False)


def evaluate(folder: str | Path, samples: int, seed: int = 12345, held_out: bool = True) -> dict[str, Any]:
    """Sample ``samples`` pictures for random captions (held-out combinations or training ones) with
    prefkit's sampler at ``prefkit generate``'s default settings, and read them back with the judge."""
    import torch

    from prefkit.config import GenerateConfig
    from prefkit.families import family_of, load_pipeline
    from prefkit.sampling import SamplerSettings, sample

    fam = family_of(load_pipeline(str(folder)))
    d = GenerateConfig()
    noise = fam.default_noise  # generate's defaults: eta 1 (DDIM), noise level 0.7 (flow)
    settings = SamplerSettings(steps=d.steps, guidance=d.guidance, noise=noise, height=32, width=32)
    rng = np.random.default_rng(seed)
    st = BuildSettings()
    captions = [c for _, c in _scenes(rng, samples, st, held_out=held_out)]
    counts = {"colour": 0, "shape": 0, "colour_and_shape": 0, "background": 0, "all": 0}
    for i in range(0, samples, 16):
        chunk = captions[i : i + 16]
        with torch.no_grad():
            out = sample(fam, chunk, [seed + i + j for j in range(len(chunk))], settings)
        for image, text in zip(out.images, chunk, strict=True):
            v = shapes.check(shapes.analyse(image), shapes.parse_caption(text))
            counts["colour"] += v["colour"]
            counts["shape"] += v["shape"]
            counts["background"] += v["background"]
            counts["colour_and_shape"] += v["colour"] and v["shape"]
            counts["all"] += all(v.values())
    used = {"steps": settings.steps, "guidance": settings.guidance, "noise_level": settings.noise, "size": 32}
    return {k: v / samples for k, v in counts.items()} | {"samples": samples, "sampler": used}


# recommended prefkit train settings for this model (a model folder's prefkit_train.json): the quickstart's
RECOMMENDED_TRAIN = {
    "about": "Recommended prefkit train settings for tiny-shapes (3 M parameters): the quickstart's "
    "(docs/results.md). Settings given on the command line or in --config win.",
    "all": {"lr": 0.001},
    "d3po": {"max_steps": 120, "batch_size": 8, "timestep_fraction": 0.5, "kl_coef": 0.1},
    "dense": {"max_steps": 100},
}


def build(path: str | os.PathLike, st: BuildSettings, log=print) -> dict[str, Any]:
    """Build, train, check and publish the model folder at ``path``; returns the build report."""
    import torch

    from prefkit.models.parts import quieted_libraries, rename_into_place, temp_sibling

    if st.threads:
        torch.set_num_threads(st.threads)
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, "tmp")
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        with quieted_libraries():
            rng = np.random.default_rng(st.seed)
            torch.manual_seed(st.seed)
            pipe = make_untrained(st)
            t = time.perf_counter()
            shift, scale = train_vae(pipe, st, rng, log)
            pipe.vae.register_to_config(
                shift_factor=None if st.family == "sd15" else shift, scaling_factor=scale
            )
            times["vae_s"] = time.perf_counter() - t
            t = time.perf_counter()
            train_denoiser(pipe, st, rng, log)
            times["denoiser_s"] = time.perf_counter() - t
            pipe.save_pretrained(tmp, safe_serialization=True)
        times["build_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        report = {
            "model": "tiny-shapes",
            "settings": asdict(st),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "vae_shift_factor": shift,
            "vae_scaling_factor": scale,
            "held_out": evaluate(tmp, st.eval_samples, held_out=True),
            "training_combinations": evaluate(tmp, st.eval_samples, held_out=False),
            "held_out_combinations": sorted(" ".join(c) for c in shapes.HELD_OUT),
        }
        times["check_s"] = time.perf_counter() - t
        # the training settings the quickstart uses, picked up by prefkit train (prefkit/training/recommended.py)
        (tmp / "prefkit_train.json").write_text(json.dumps(RECOMMENDED_TRAIN, indent=2) + "\n")
        report["times"] = {k: round(v, 1) for k, v in times.items()}
        report["size_bytes"] = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        (tmp / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rename_into_place(tmp, path, overwrite=True)
    return report


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefkit.models.shapes_model",
        description="Train the built-in tiny-shapes model from scratch (CPU, no downloads).",
    )
    parser.add_argument("path", help="output folder (replaced atomically when the build finishes)")
    defaults = BuildSettings()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    path = args.pop("path")
    report = build(path, BuildSettings(**args), log=lambda m: print(m, flush=True))
    print(
        json.dumps(
            {k: report[k] for k in ("held_out", "training_combinations", "times", "size_bytes")}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
