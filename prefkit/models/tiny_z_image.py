"""``tiny-z-image``: a tiny random-weight ``ZImagePipeline`` (Z-Image) built in code (no downloads).

* tokenizer: prefkit's offline byte-level BPE ``Qwen2Tokenizer`` (:func:`prefkit.models.tiny_qwen_image.
  qwen2_tokenizer`: each prompt word one token, ``<|im_start|>`` / ``<|im_end|>`` special) with the part
  of Qwen3's chat template that ZImagePipeline uses: one user turn and the generation prompt, the empty
  ``<think>`` block only when ``enable_thinking`` is false (the pipeline passes True), so a prompt becomes
  ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`` as with Qwen3's tokenizer.
* text encoder: ``Qwen3Model`` (2 layers, hidden 32, 2 query heads and 1 key/value head of 16); the
  pipeline takes its second-to-last hidden state (``hidden_states[-2]``), as it does Qwen3-4B's.
* transformer: ``ZImageTransformer2DModel`` (the single-stream S3-DiT: 1 noise-refiner, 1
  context-refiner and 2 main layers, dim 32, 2 heads of 16, RoPE axes 4/6/6, caption features 32).
* VAE: ``AutoencoderKL`` of two blocks (downscale 2) with 16 latent channels and FLUX's scaling and
  shift (0.3611, 0.1159), as Z-Image's VAE (FLUX.1's).
* scheduler: FlowMatchEulerDiscreteScheduler as Tongyi-MAI/Z-Image-Turbo's scheduler_config.json
  (static shift 3.0, no dynamic shifting).

32 px images are 16 x 16 latents, 8 x 8 = 64 image tokens (2 x 2 patches). ZImagePipeline hard-codes its
default size (1024 px), so pass ``height=32, width=32``.

Heavy libraries are imported inside functions only.
"""

from __future__ import annotations

import os

from prefkit.models.parts import build_model_folder, seed_component, tiny_vae
from prefkit.models.tiny_qwen_image import qwen2_tokenizer

__all__ = ["QWEN3_CHAT_TEMPLATE", "build_tiny_z_image", "make_z_image"]

#: The part of Qwen3's chat template (Qwen/Qwen3-4B tokenizer_config.json) that ZImagePipeline's
#: ``apply_chat_template(messages, add_generation_prompt=True, enable_thinking=True)`` reaches: plain
#: turns, the assistant's generation prompt, and the empty think block only when thinking is off.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def qwen3_tokenizer():
    """The offline Qwen2 BPE with Qwen3's chat template (the tokenizer class Z-Image publishes)."""
    tok = qwen2_tokenizer()
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    return tok


def make_z_image(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    text_dim, latent_channels = 32, 16
    tokenizer = qwen3_tokenizer()
    seed_component(seed, 0)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=text_dim,
        intermediate_size=2 * text_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention, as Qwen3-4B's 32 / 8
        head_dim=16,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = Qwen3Model(config).eval()
    seed_component(seed, 1)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=latent_channels,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=text_dim,
        axes_dims=[4, 6, 6],  # sums to the head dim 16, as Z-Image's 32/48/48 to 128
        axes_lens=[1536, 512, 512],  # as Z-Image-Turbo's transformer/config.json
    )
    seed_component(seed, 2)
    vae = tiny_vae(latent_channels, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False)
    # As Tongyi-MAI/Z-Image-Turbo scheduler/scheduler_config.json.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    return ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def build_tiny_z_image(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny ``ZImagePipeline`` (16 latent channels; pass height=32, width=32) into ``path``."""
    return build_model_folder(make_z_image, path, seed)
