"""Tiny, randomly initialised text-to-image pipelines built entirely in code (no downloads).

Four families are provided, each saved as an ordinary diffusers folder that loads back with a plain
``diffusers.DiffusionPipeline.from_pretrained(path)``:

* ``tiny-sd15``: ``StableDiffusionPipeline`` (UNet + CLIP text encoder + VAE, DDIM as SD-1.5).
* ``tiny-sd3``: ``StableDiffusion3Pipeline`` (MMDiT + two CLIP encoders + a tiny T5, flow matching).
* ``tiny-flux``: ``FluxPipeline`` (FLUX transformer + CLIP + tiny T5, flow matching, true CFG).
* ``tiny-sdxl``: ``StableDiffusionXLPipeline`` (UNet with size conditioning + two CLIP encoders + VAE,
  DDIM as SDXL; built in :mod:`prefkit.models.tiny_sdxl`).
* ``tiny-qwen-image``: ``QwenImagePipeline`` (Qwen-Image MMDiT + tiny Qwen2.5-VL + video VAE;
  :mod:`prefkit.models.tiny_qwen_image`; pass ``height=32, width=32`` as for FLUX).
* ``tiny-z-image``: ``ZImagePipeline`` (Z-Image single-stream DiT + tiny Qwen3 + FLUX-style VAE;
  :mod:`prefkit.models.tiny_z_image`; pass ``height=32, width=32``).

SD-1.5, SD3 and SDXL default to 32x32 px images (16x16 latents, VAE downscale 2). FLUX has no configurable
default size (the pipeline hard-codes 128 x vae_scale_factor = 256 px), so pass ``height=32, width=32``.

The models are meant for tests and demos: weights are random, so images are noise-like, but every code
path (tokenizers, encoders, schedulers, VAE decode, LoRA) is the real one.

The same registry also names real-size random-weight models for benchmarks, ``sd15-random``,
``sd3-medium-random``, ``sdxl-random``, ``qwen-image-random`` and ``z-image-turbo-random``
(:mod:`prefkit.models.real_size`;
GB-sized, built into the cache on first use).

Heavy libraries (torch, diffusers, transformers) are imported inside functions only.

Rebuild a folder from the command line::

    python -m prefkit.models.tiny tiny-sd3 data/models/tiny-sd3
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_MODELS",
    "CACHE_VERSION",
    "PROMPT_WORDS",
    "TRAINED_MODELS",
    "build_tiny_flux",
    "build_tiny_sd3",
    "build_tiny_sd15",
    "build_tiny_sdxl",
    "resolve_builtin",
]

from prefkit.models.parts import (
    PROMPT_WORDS,
    build_model_folder,
    clip_text_config,
    clip_tokenizer,
    seed_component,
    t5_tokenizer,
    tiny_vae,
)
from prefkit.models.tiny_qwen_image import build_tiny_qwen_image, make_qwen_image
from prefkit.models.tiny_sdxl import build_tiny_sdxl, make_sdxl
from prefkit.models.tiny_z_image import build_tiny_z_image, make_z_image

#: Bumped whenever a builder's output changes, so stale cache folders are not reused.
CACHE_VERSION = "v1"

# --------------------------------------------------------------------------------------------------
# components
# --------------------------------------------------------------------------------------------------


def t5_encoder(tokenizer, d_model: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=16,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=d_model // 16,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def make_sd15(seed: int):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = clip_tokenizer()
    seed_component(seed, 0)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer, hidden_size=32))
    seed_component(seed, 1)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    seed_component(seed, 2)
    vae = tiny_vae(4, scaling_factor=0.18215, shift_factor=None, quant_conv=True)
    return sd15_pipeline(vae, text_encoder, tokenizer, unet)


def sd15_pipeline(vae, text_encoder, tokenizer, unet):
    """A ``StableDiffusionPipeline`` of these parts with SD-1.5's DDIM scheduler (scaled-linear betas
    0.00085-0.012, epsilon prediction, steps offset 1) and no safety checker."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_sd3(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    clip_hidden, clip_proj, t5_dim = 32, 32, 64  # t5_dim >= 2 * clip_hidden (CLIP embeds are padded to it)
    tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    seed_component(seed, 0)
    text_encoder = CLIPTextModelWithProjection(clip_text_config(tokenizer, clip_hidden, clip_proj))
    seed_component(seed, 1)
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizer_2, clip_hidden, clip_proj))
    seed_component(seed, 2)
    text_encoder_3 = t5_encoder(tokenizer_3, t5_dim)
    seed_component(seed, 3)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=t5_dim,
        caption_projection_dim=32,
        pooled_projection_dim=2 * clip_proj,
        pos_embed_max_size=32,  # up to 64x64 latents = 128 px images
    )
    seed_component(seed, 4)
    vae = tiny_vae(16, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def make_flux(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    clip_hidden, t5_dim, latent_channels = 32, 64, 16
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    seed_component(seed, 0)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer, clip_hidden))
    seed_component(seed, 1)
    text_encoder_2 = t5_encoder(tokenizer_2, t5_dim)
    seed_component(seed, 2)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # latents are packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_dim,
        pooled_projection_dim=clip_hidden,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )
    seed_component(seed, 3)
    vae = tiny_vae(latent_channels, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False)
    # As black-forest-labs/FLUX.1-dev scheduler_config.json.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_tiny_sd15(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny ``StableDiffusionPipeline`` (32 px default, 4 latent channels) into ``path``."""
    return build_model_folder(make_sd15, path, seed)


def build_tiny_sd3(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny ``StableDiffusion3Pipeline`` (32 px default, 16 latent channels) into ``path``."""
    return build_model_folder(make_sd3, path, seed)


def build_tiny_flux(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny ``FluxPipeline`` (16 latent channels; pass height=32, width=32) into ``path``."""
    return build_model_folder(make_flux, path, seed)


def _real_size(name: str) -> Callable[..., str]:
    """The builder of a real-size random-weight model (:mod:`prefkit.models.real_size`), imported on use."""

    def build(path: str | os.PathLike, seed: int = 0) -> str:
        from prefkit.models import real_size

        return getattr(real_size, "build_" + name.replace("-", "_"))(path, seed)

    return build


BUILTIN_MODELS: dict[str, Callable[..., str]] = {
    "tiny-sd15": build_tiny_sd15,
    "tiny-sd3": build_tiny_sd3,
    "tiny-flux": build_tiny_flux,
    "tiny-sdxl": build_tiny_sdxl,
    "tiny-qwen-image": build_tiny_qwen_image,
    "tiny-z-image": build_tiny_z_image,
    # real size, random weights, for benchmarks (GB-sized folders, built on first use)
    "sd15-random": _real_size("sd15-random"),
    "sd3-medium-random": _real_size("sd3-medium-random"),
    "sdxl-random": _real_size("sdxl-random"),
    "qwen-image-random": _real_size("qwen-image-random"),
    "z-image-turbo-random": _real_size("z-image-turbo-random"),
}

_MAKERS: dict[str, Callable[[int], Any]] = {
    "tiny-sd15": make_sd15,
    "tiny-sd3": make_sd3,
    "tiny-flux": make_flux,
    "tiny-sdxl": make_sdxl,
    "tiny-qwen-image": make_qwen_image,
    "tiny-z-image": make_z_image,
}

_COMMITTED = ("tiny-sd3",)


def _committed_folder(name: str) -> Path:
    """``data/models/<name>`` of the shipped data (see prefkit.resources)."""
    from prefkit.resources import data_dir

    return data_dir() / "models" / name


def _cache_dir() -> Path:
    return Path(os.environ.get("PREFKIT_CACHE") or "~/.cache/prefkit").expanduser()


def _is_model_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


#: Built-in models with trained weights, committed under data/models (too slow to build on first use):
#: name -> the command that rebuilds them.
TRAINED_MODELS: dict[str, str] = {
    "tiny-shapes": "python -m prefkit.models.shapes_model data/models/tiny-shapes --seed 0",
}


def resolve_builtin(name: str) -> str | None:
    """Local folder of a built-in model, or None if ``name`` is not a built-in name.

    ``tiny-shapes`` (the default model: trained to draw coloured shapes, prefkit.models.shapes_model) is
    always the committed ``data/models/tiny-shapes``.

    ``tiny-sd3`` resolves to the committed ``data/models/tiny-sd3`` when present. Otherwise the model is
    built on first use into ``$PREFKIT_CACHE/models/<name>-v1`` (default cache ``~/.cache/prefkit``);
    concurrent first uses are safe (temp folder + rename; the first finished folder wins).
    """
    if name in TRAINED_MODELS:
        folder = _committed_folder(name)
        if not _is_model_folder(folder):
            from prefkit.errors import PrefkitError

            raise PrefkitError(
                f"--model {name}: the trained weights are missing from {folder}; restore them from the "
                f"repository, or rebuild them (about 30 minutes on a CPU) with: {TRAINED_MODELS[name]}"
            )
        return str(folder)
    if name not in BUILTIN_MODELS:
        return None
    if name in _COMMITTED:
        committed = _committed_folder(name)
        if _is_model_folder(committed):
            return str(committed)
    target = _cache_dir() / "models" / f"{name}-{CACHE_VERSION}"
    if not _is_model_folder(target):
        # A folder without model_index.json can only be a damaged one: replace it.
        if name in _MAKERS:
            build_model_folder(_MAKERS[name], target, seed=0, overwrite=target.exists())
        else:
            from prefkit.models.real_size import write_pipeline

            write = lambda tmp, seed: write_pipeline(name, tmp, seed)  # noqa: E731
            build_model_folder(None, target, seed=0, overwrite=target.exists(), write=write)
    return str(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefkit.models.tiny", description="(Re)build a tiny diffusers model folder."
    )
    parser.add_argument("name", choices=sorted(BUILTIN_MODELS))
    parser.add_argument("path", help="output folder (replaced atomically if it exists)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(BUILTIN_MODELS[args.name](args.path, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
