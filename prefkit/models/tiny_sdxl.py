"""``tiny-sdxl``: a tiny, randomly initialised ``StableDiffusionXLPipeline`` built in code (no downloads).

The parts are SDXL's at toy width: a UNet with SDXL's conditioning (``addition_embed_type="text_time"``:
pooled text + 6 size time ids, linear projections in its transformer blocks, more transformer layers in
the deeper block), CLIP-L- and bigG-style text encoders (``CLIPTextModel`` + ``CLIPTextModelWithProjection``,
32 wide each, so prompt embeddings are [B, 77, 64] and the pooled embedding [B, 32]), the 2x tiny VAE with
SDXL's scaling factor, and SDXL base's own scheduler (EulerDiscreteScheduler, which prefkit's SDXL family
replaces by DDIM with the same betas). 32 px default (16x16 latents). The offline tokenizers and seeding
are those of the other tiny models (:mod:`prefkit.models.parts`); the published scheduler config and VAE
scaling factor are :mod:`prefkit.models.real_size`'s.

Heavy libraries are imported inside functions only.
"""

from __future__ import annotations

import os

from prefkit.models.parts import (
    build_model_folder,
    clip_text_config,
    clip_tokenizer,
    seed_component,
    tiny_vae,
)
from prefkit.models.real_size import SDXL_SCHEDULER, SDXL_VAE

_TIME_EMBED = 8  # addition_time_embed_dim (SDXL: 256); the UNet embeds 6 time ids of this width each


def make_sdxl(seed: int):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    hidden, hidden_2, proj_2 = 32, 32, 32
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    seed_component(seed, 0)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer, hidden))
    seed_component(seed, 1)
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizer_2, hidden_2, proj_2))
    seed_component(seed, 2)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),  # heads per block (diffusers' name), as SDXL's (5, 10, 20)
        norm_num_groups=16,
        cross_attention_dim=hidden + hidden_2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED,
        projection_class_embeddings_input_dim=6 * _TIME_EMBED + proj_2,
    )
    seed_component(seed, 3)
    vae = tiny_vae(4, scaling_factor=SDXL_VAE["scaling_factor"], shift_factor=None, quant_conv=True)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_tiny_sdxl(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny ``StableDiffusionXLPipeline`` (32 px default, 4 latent channels) into ``path``."""
    return build_model_folder(make_sdxl, path, seed)
