"""Real-size pipelines with random weights, built from published configs (no downloads).

They exist to measure speed and memory at the sizes people train (``prefkit bench --model ...``); the
images are noise. Every number below is copied from the named ``config.json`` of the published model
and written here as a fact, so nothing is fetched at run time.

* ``sd15-random``: ``StableDiffusionPipeline`` at 512 px. The UNet, the VAE and the DDIM scheduler are
  those of ``runwayml/stable-diffusion-v1-5`` (UNet: 859,520,964 parameters, as published). The text
  encoder is CLIP ViT-L/14's text tower (``openai/clip-vit-large-patch14``: 768 wide, 12 layers).
* ``sd3-medium-random``: ``StableDiffusion3Pipeline`` at 1024 px. The MMDiT transformer, the VAE and
  the scheduler are those of ``stabilityai/stable-diffusion-3-medium-diffusers`` (transformer:
  2,028,328,000 parameters, the published "2B"); CLIP-L and CLIP-G (``text_encoder``,
  ``text_encoder_2``) are real-size too.
* ``sdxl-random``: ``StableDiffusionXLPipeline`` at 1024 px. The UNet, the VAE and the scheduler
  (EulerDiscreteScheduler, replaced by DDIM when prefkit loads it) are those of
  ``stabilityai/stable-diffusion-xl-base-1.0`` (UNet: 2,567,463,684 parameters, the paper's "2.6B");
  CLIP-L (``text_encoder``) and OpenCLIP-bigG with its projection (``text_encoder_2``) are real-size too.
* ``qwen-image-random``: ``QwenImagePipeline`` at 1024 px. The MMDiT transformer, the video VAE and the
  scheduler are those of ``Qwen/Qwen-Image`` (transformer: 20,430,401,088 parameters, the published
  "20B" MMDiT). The Qwen2.5-VL-7B text encoder keeps its width (3584, the transformer's
  ``joint_attention_dim``) and its attention layout (28 heads, 4 key/value heads, multimodal RoPE
  16/24/24) but has 1 layer instead of 28 and a 1-block vision tower (which the pipeline never calls);
  its tokenizer is prefkit's offline tiny Qwen2 BPE (:mod:`prefkit.models.tiny_qwen_image`), whose
  template prefix is 34 tokens as the real one's.
* ``z-image-turbo-random``: ``ZImagePipeline`` at 1024 px. The single-stream DiT, the VAE (FLUX.1's) and
  the scheduler are those of ``Tongyi-MAI/Z-Image-Turbo`` (transformer: 6,154,908,736 parameters, the
  published "6B"). The Qwen3-4B text encoder keeps its width (2560, the transformer's ``cap_feat_dim``)
  and attention layout (32 heads, 8 key/value heads of 128) but has 2 layers instead of 36 (the pipeline
  reads the second-to-last hidden state: with 2 layers that is still a layer's output); its tokenizer is
  prefkit's offline tiny Qwen2 BPE with Qwen3's chat template (:mod:`prefkit.models.tiny_z_image`).

What is not the published model, and why it does not change what the bench measures:

* Tokenizers are prefkit's offline tiny ones (:mod:`prefkit.models.tiny`: a byte-level BPE of 763
  tokens instead of CLIP's 49,408; a T5 Unigram of 409 pieces instead of 32,100). A
  vocabulary is an embedding lookup: only the embedding tables are smaller. Sequence lengths are the
  real ones (CLIP 77; T5 ``model_max_length`` 512, so SD3 pads prompts to its default 256 tokens and
  the transformer attends over the same 77 + 256 text tokens as the published model).
* SD3's T5 encoder keeps T5-v1.1-XXL's width (d_model 4096, which the transformer's
  ``joint_attention_dim`` needs) but has 1 layer, 8 heads and d_ff 2048 instead of 24 layers, 64
  heads and 10240 (~4.7 B parameters, 9.5 GB in bfloat16). Text encoding runs once per prompt, never
  inside the denoising loop or a training step, so it is not what the bench's figures are about.

Cost (weights saved in bfloat16 safetensors, built once into the cache like ``tiny-sd15``):

==================== ===================== ================ ======================= ====================
model                denoiser parameters   folder on disk   peak RAM while building  build time (2 CPUs)
==================== ===================== ================ ======================= ====================
sd15-random          0.86 B (UNet)         2.0 GB           2.0 GiB                  33 s
sd3-medium-random    2.03 B (transformer)  5.5 GB           4.5 GiB                  86 s
sdxl-random          2.57 B (UNet)         6.7 GB (*)       5.2 GiB                  122 s (**)
qwen-image-random    20.4 B (transformer)  ~42 GB (est.)    ~41 GiB (est.)           not measured
z-image-turbo-random 6.15 B (transformer)  ~12.9 GB (est.)  ~11.5 GiB (est.)         not measured
==================== ===================== ================ ======================= ====================

z-image-turbo-random has not been built here either: 6.44 B parameters in all (transformer 6.155 B, the
2-layer text encoder 0.204 B, VAE 0.084 B, counted on the meta device) x 2 bytes in bfloat16.

(*) 3.37 B parameters in all (UNet 2.567 B, bigG text 0.632 B with the tiny vocabulary, CLIP-L text 0.086 B,
VAE 0.084 B, counted on the meta device) x 2 bytes in bfloat16. (**) measured while other work shared the
2 cores.

Components are built and saved one at a time in bfloat16 (never a float32 copy of the transformer,
never the whole pipeline in memory), so peak RAM is about the largest component. Loading for the
bench: float32 on the CPU (``--dtype auto``) doubles those sizes; bfloat16 on CUDA keeps them.

Heavy libraries are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "PUBLISHED_DENOISER_PARAMETERS",
    "REAL_SIZE_MODELS",
    "build_qwen_image_random",
    "build_sd3_medium_random",
    "build_sd15_random",
    "build_sdxl_random",
    "build_z_image_turbo_random",
    "denoiser_parameters",
]

# -- SD-1.5: runwayml/stable-diffusion-v1-5 -----------------------------------------------------------

#: unet/config.json of runwayml/stable-diffusion-v1-5.
SD15_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}

#: vae/config.json of runwayml/stable-diffusion-v1-5 (scaling_factor: the 0.18215 of the LDM paper).
SD15_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}

#: scheduler/scheduler_config.json of runwayml/stable-diffusion-v1-5 (published as PNDM with these
#: betas; prefkit samples SD-1.5 with DDIM, as its DDIMFamily would convert it to anyway).
SD15_SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

#: text_config of openai/clip-vit-large-patch14 (SD-1.5's text_encoder; also SD3's text_encoder).
CLIP_L_TEXT: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

# -- SD3-medium: stabilityai/stable-diffusion-3-medium-diffusers --------------------------------------

#: transformer/config.json of stabilityai/stable-diffusion-3-medium-diffusers.
SD3_TRANSFORMER: dict[str, Any] = {
    "attention_head_dim": 64,
    "caption_projection_dim": 1536,
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 24,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "sample_size": 128,
}

#: vae/config.json of stabilityai/stable-diffusion-3-medium-diffusers.
SD3_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}

#: scheduler/scheduler_config.json of stabilityai/stable-diffusion-3-medium-diffusers.
SD3_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}

#: text_encoder_2/config.json of stabilityai/stable-diffusion-3-medium-diffusers (OpenCLIP ViT-bigG/14).
CLIP_G_TEXT: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

#: T5-v1.1-XXL's width and attention buckets (text_encoder_3/config.json), with 1 layer, 8 heads and a
#: small feed-forward instead of 24 layers, 64 heads and d_ff 10240 (see the module docstring).
T5_REDUCED: dict[str, Any] = {
    "d_model": 4096,
    "d_kv": 64,
    "num_heads": 8,
    "d_ff": 2048,
    "num_layers": 1,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
}
_T5_MODEL_MAX_LENGTH = 512  # as the published T5 tokenizer; SD3 pads to 256 of them

# -- SDXL: stabilityai/stable-diffusion-xl-base-1.0 ---------------------------------------------------

#: unet/config.json of stabilityai/stable-diffusion-xl-base-1.0 (the keys that differ from diffusers'
#: UNet2DConditionModel defaults, and the architecture's main ones). ``attention_head_dim`` is the number
#: of heads per block (diffusers' historic name). The added embedding: 6 time ids x 256 + the pooled
#: 1280 of text_encoder_2 = 2816 (``projection_class_embeddings_input_dim``).
SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": (5, 10, 20),
    "block_out_channels": (320, 640, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "time_embedding_type": "positional",
    "transformer_layers_per_block": (1, 2, 10),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "use_linear_projection": True,
}

#: vae/config.json of stabilityai/stable-diffusion-xl-base-1.0 (force_upcast: it overflows in float16).
SDXL_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}

#: scheduler/scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0 (EulerDiscreteScheduler), in
#: full: Euler ignores clip_sample, set_alpha_to_one and the rest but keeps them in its config, and the DDIM
#: prefkit samples SDXL with is made from that config (set_alpha_to_one False: the last step stays noisy).
SDXL_SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

#: Published parameter counts of the denoisers (what ``denoiser_parameters`` must reproduce):
#: SD-1.5's UNet 859,520,964 ("860M" in the model card); SD3-medium's MMDiT 2,028,328,000 ("2B"); SDXL
#: base 1.0's UNet 2,567,463,684 (the SDXL paper's "2.6B"; the count its unet/config.json yields);
#: Qwen-Image's MMDiT 20,430,401,088 (the "20B" of the model card), from QWEN_IMAGE_TRANSFORMER;
#: Z-Image-Turbo's S3-DiT 6,154,908,736 (the "6B" of the model card), from Z_IMAGE_TRANSFORMER.
PUBLISHED_DENOISER_PARAMETERS: dict[str, int] = {
    "sd15-random": 859_520_964,
    "sd3-medium-random": 2_028_328_000,
    "sdxl-random": 2_567_463_684,
    "qwen-image-random": 20_430_401_088,
    "z-image-turbo-random": 6_154_908_736,
}

# -- Qwen-Image: Qwen/Qwen-Image ----------------------------------------------------------------------

#: transformer/config.json of Qwen/Qwen-Image (QwenImageTransformer2DModel).
QWEN_IMAGE_TRANSFORMER: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}
#: vae/config.json of Qwen/Qwen-Image (AutoencoderKLQwenImage; its latents_mean / latents_std are the
#: class defaults of diffusers 0.42, which are the published ones).
QWEN_IMAGE_VAE: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}
#: scheduler/scheduler_config.json of Qwen/Qwen-Image.
QWEN_IMAGE_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}
#: Qwen/Qwen2.5-VL-7B-Instruct's language model, reduced to 1 layer (see the module docstring).
QWEN_VL_TEXT_REDUCED: dict[str, Any] = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 1,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}

# -- Z-Image-Turbo: Tongyi-MAI/Z-Image-Turbo -----------------------------------------------------------
# Not fetched here (no network): each config below was read in several public repositories that copy
# the published files, which agree key for key (the transformer's quoted as "From https://huggingface.co/
# Tongyi-MAI/Z-Image-Turbo/blob/main/transformer/config.json"); the transformer's parameter count they
# report from the published weights (453 tensors, 6,154,908,736 parameters) is the one this config
# yields on the meta device.

#: transformer/config.json of Tongyi-MAI/Z-Image-Turbo (ZImageTransformer2DModel).
Z_IMAGE_TRANSFORMER: dict[str, Any] = {
    "all_f_patch_size": [1],
    "all_patch_size": [2],
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
    "cap_feat_dim": 2560,
    "dim": 3840,
    "in_channels": 16,
    "n_heads": 30,
    "n_kv_heads": 30,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "norm_eps": 1e-05,
    "qk_norm": True,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
}
#: vae/config.json of Tongyi-MAI/Z-Image-Turbo (AutoencoderKL: FLUX.1's VAE, 16 channels, x8).
Z_IMAGE_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}
#: scheduler/scheduler_config.json of Tongyi-MAI/Z-Image-Turbo (a static shift: no dynamic shifting).
Z_IMAGE_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0}
#: text_encoder/config.json of Tongyi-MAI/Z-Image-Turbo (Qwen3-4B), reduced to 2 layers (module docstring).
QWEN3_TEXT_REDUCED: dict[str, Any] = {
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 2,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True,
}

_SAVE_DTYPE = "bfloat16"


# -- components ---------------------------------------------------------------------------------------


def _clip_text(cls_name: str, config: dict[str, Any], tokenizer):
    import transformers

    cfg = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    return getattr(transformers, cls_name)(cfg)


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **T5_REDUCED,
    )
    return T5EncoderModel(cfg)


def _sd15_parts() -> tuple[str, dict[str, Callable[[], Any]]]:
    """The pipeline class and, per component, a function that builds it (in the order they are seeded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from prefkit.models.parts import clip_tokenizer

    tokenizer = clip_tokenizer()
    return "StableDiffusionPipeline", {
        "text_encoder": lambda: _clip_text("CLIPTextModel", CLIP_L_TEXT, tokenizer),
        "unet": lambda: UNet2DConditionModel(**SD15_UNET),
        "vae": lambda: AutoencoderKL(**SD15_VAE),
        "tokenizer": lambda: tokenizer,
        "scheduler": lambda: DDIMScheduler(**SD15_SCHEDULER),
    }


def _sd3_parts() -> tuple[str, dict[str, Callable[[], Any]]]:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from prefkit.models.parts import clip_tokenizer, t5_tokenizer

    tok, tok_2, tok_3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer(max_length=_T5_MODEL_MAX_LENGTH)
    return "StableDiffusion3Pipeline", {
        "text_encoder": lambda: _clip_text("CLIPTextModelWithProjection", CLIP_L_TEXT, tok),
        "text_encoder_2": lambda: _clip_text("CLIPTextModelWithProjection", CLIP_G_TEXT, tok_2),
        "text_encoder_3": lambda: _t5(tok_3),
        "transformer": lambda: SD3Transformer2DModel(**SD3_TRANSFORMER),
        "vae": lambda: AutoencoderKL(**SD3_VAE),
        "tokenizer": lambda: tok,
        "tokenizer_2": lambda: tok_2,
        "tokenizer_3": lambda: tok_3,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
    }


def _sdxl_parts() -> tuple[str, dict[str, Callable[[], Any]]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from prefkit.models.parts import clip_tokenizer

    tok, tok_2 = clip_tokenizer(), clip_tokenizer()
    return "StableDiffusionXLPipeline", {
        "text_encoder": lambda: _clip_text("CLIPTextModel", CLIP_L_TEXT, tok),
        "text_encoder_2": lambda: _clip_text("CLIPTextModelWithProjection", CLIP_G_TEXT, tok_2),
        "unet": lambda: UNet2DConditionModel(**SDXL_UNET),
        "vae": lambda: AutoencoderKL(**SDXL_VAE),
        "tokenizer": lambda: tok,
        "tokenizer_2": lambda: tok_2,
        "scheduler": _sdxl_scheduler,
    }


def _sdxl_scheduler():
    """Euler computes its sigmas when made: on the CPU, even where the other parts are made on the meta
    device (only its config is saved)."""
    import torch
    from diffusers import EulerDiscreteScheduler

    with torch.device("cpu"):
        return EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)


def _qwen_text_encoder(tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {
        **QWEN_VL_TEXT_REDUCED,
        "vocab_size": len(tokenizer),
        "bos_token_id": None,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2}
    vision |= {"out_hidden_size": QWEN_VL_TEXT_REDUCED["hidden_size"], "fullatt_block_indexes": [0]}
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision))


def _qwen_image_parts() -> tuple[str, dict[str, Callable[[], Any]]]:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    from prefkit.models.tiny_qwen_image import qwen2_tokenizer

    tok = qwen2_tokenizer()
    return "QwenImagePipeline", {
        "text_encoder": lambda: _qwen_text_encoder(tok),
        "transformer": lambda: QwenImageTransformer2DModel(**QWEN_IMAGE_TRANSFORMER),
        "vae": lambda: AutoencoderKLQwenImage(**QWEN_IMAGE_VAE),
        "tokenizer": lambda: tok,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER),
    }


def _qwen3_text_encoder(tokenizer):
    from transformers import Qwen3Config, Qwen3Model

    cfg = Qwen3Config(
        **QWEN3_TEXT_REDUCED,
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3Model(cfg)


def _z_image_parts() -> tuple[str, dict[str, Callable[[], Any]]]:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel

    from prefkit.models.tiny_z_image import qwen3_tokenizer

    tok = qwen3_tokenizer()
    return "ZImagePipeline", {
        "text_encoder": lambda: _qwen3_text_encoder(tok),
        "transformer": lambda: ZImageTransformer2DModel(**Z_IMAGE_TRANSFORMER),
        "vae": lambda: AutoencoderKL(**Z_IMAGE_VAE),
        "tokenizer": lambda: tok,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(**Z_IMAGE_SCHEDULER),
    }


_PARTS: dict[str, Callable[[], tuple[str, dict[str, Callable[[], Any]]]]] = {
    "sd15-random": _sd15_parts,
    "sd3-medium-random": _sd3_parts,
    "sdxl-random": _sdxl_parts,
    "qwen-image-random": _qwen_image_parts,
    "z-image-turbo-random": _z_image_parts,
}
_DENOISER = {
    "sd15-random": "unet",
    "sd3-medium-random": "transformer",
    "sdxl-random": "unet",
    "qwen-image-random": "transformer",
    "z-image-turbo-random": "transformer",
}
#: Constructor arguments of the pipeline class that are no component (model_index.json settings).
_PIPELINE_EXTRA: dict[str, dict[str, Any]] = {
    "StableDiffusionPipeline": {
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    },
    "StableDiffusionXLPipeline": {"force_zeros_for_empty_prompt": True, "add_watermarker": False},
}
REAL_SIZE_MODELS = tuple(_PARTS)


@contextlib.contextmanager
def _default_dtype(dtype) -> Iterator[None]:
    """Create parameters directly in ``dtype`` (no float32 copy of 2 B parameters is ever made)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def denoiser_parameters(name: str) -> int:
    """Parameters of the model's denoiser, counted on the meta device (shapes only, nothing allocated)."""
    import torch

    with torch.device("meta"):
        module = _PARTS[name]()[1][_DENOISER[name]]()
    return sum(p.numel() for p in module.parameters())


def write_pipeline(name: str, folder: str | Path, seed: int = 0) -> None:
    """Write the diffusers folder of ``name`` into ``folder`` (which must exist): model_index.json from
    the pipeline assembled on the meta device, then each component built in bfloat16, saved, freed."""
    import diffusers
    import torch

    from prefkit.models.parts import seed_component

    folder = Path(folder)
    cls_name, parts = _PARTS[name]()
    with torch.device("meta"):
        meta = {k: make() for k, make in parts.items()}
    pipe_cls = getattr(diffusers, cls_name)
    pipe_cls(**meta, **_PIPELINE_EXTRA.get(cls_name, {})).save_config(folder)
    del meta
    for offset, (key, make) in enumerate(parts.items()):
        seed_component(seed, offset)
        with _default_dtype(getattr(torch, _SAVE_DTYPE)):
            part = make()
        if isinstance(part, torch.nn.Module):
            part.to(getattr(torch, _SAVE_DTYPE)).save_pretrained(folder / key, safe_serialization=True)
        else:
            part.save_pretrained(folder / key)
        del part
        gc.collect()


def _builder(name: str) -> Callable[..., str]:
    def build(path, seed: int = 0) -> str:
        from prefkit.models.parts import build_model_folder

        return build_model_folder(None, path, seed, write=lambda tmp, s: write_pipeline(name, tmp, s))

    build.__name__ = "build_" + name.replace("-", "_")
    build.__doc__ = f"Build ``{name}`` (random weights, real size; see the module docstring) into ``path``."
    return build


build_sd15_random = _builder("sd15-random")
build_sd3_medium_random = _builder("sd3-medium-random")
build_sdxl_random = _builder("sdxl-random")
build_qwen_image_random = _builder("qwen-image-random")
build_z_image_turbo_random = _builder("z-image-turbo-random")
