"""``tiny-qwen-image``: a tiny random-weight ``QwenImagePipeline`` built in code (no downloads).

* tokenizer: a byte-level BPE ``Qwen2Tokenizer`` built offline (Qwen2's pre-tokenizer regex, byte-level
  alphabet) in which every word of the pipeline's prompt template and of :data:`PROMPT_WORDS` is one
  token, and ``<|im_start|>`` / ``<|im_end|>`` are special tokens: the template's system part is then
  exactly 34 tokens, as with the real tokenizer, so the pipeline's ``prompt_template_encode_start_idx``
  (34) drops the template and nothing of the prompt.
* text encoder: ``Qwen2_5_VLForConditionalGeneration`` (2 layers, hidden 32, multimodal RoPE sections
  2/3/3; a 1-block vision tower the pipeline never calls).
* VAE: ``AutoencoderKLQwenImage`` (the video VAE; one frame), base 8 channels, downscale 2, 4 latent
  channels; transformer: ``QwenImageTransformer2DModel`` (2 layers, 2 heads of 16, joint dim 32).
* scheduler: FlowMatchEulerDiscreteScheduler configured as Qwen/Qwen-Image's scheduler_config.json
  (exponential time shift, base/max shift 0.5/0.9, image tokens 256..8192, shift_terminal 0.02).

32 px images are 16 x 16 latents, 64 packed tokens. QwenImagePipeline hard-codes its default size (128 x
vae_scale_factor = 256 px), so pass ``height=32, width=32`` (as for tiny-flux).

Heavy libraries are imported inside functions only.
"""

from __future__ import annotations

import os
import re

from prefkit.models.parts import (
    PROMPT_WORDS,
    _bytes_to_unicode,
    _train_word_merges,
    build_model_folder,
    seed_component,
)

__all__ = ["QWEN_TEMPLATE", "build_tiny_qwen_image", "make_qwen_image", "qwen2_tokenizer"]

#: QwenImagePipeline.prompt_template_encode (diffusers 0.42).
QWEN_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def qwen2_tokenizer(words: tuple[str, ...] = PROMPT_WORDS):
    """A byte-level BPE ``Qwen2Tokenizer`` built offline: each word (and " word") one token."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    template_words = re.findall(r"[A-Za-z]+", re.sub(r"<\|\w+\|>", " ", QWEN_TEMPLATE))
    pieces = sorted({p for w in (*words, *template_words) for p in (w, " " + w)})
    merges = _train_word_merges([[b2u[b] for b in p.encode("utf-8")] for p in pieces])
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in _SPECIALS:
        vocab[special] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=2048)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIALS[1:]])
    return tok


def make_qwen_image(seed: int):
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text_dim, latent_channels = 32, 4
    tokenizer = qwen2_tokenizer()
    seed_component(seed, 0)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": text_dim,
            "intermediate_size": 2 * text_dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            # head dim 16: 8 rotary frequencies split over (time, height, width) as Qwen2.5-VL's 16/24/24
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": None,
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": text_dim,
            "fullatt_block_indexes": [0],
        },
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    seed_component(seed, 1)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * latent_channels,  # latents are packed 2x2
        out_channels=latent_channels,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_dim,
        axes_dims_rope=(4, 6, 6),
    )
    seed_component(seed, 2)
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=latent_channels,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],  # vae_scale_factor 2 ** 1 = 2: 32 px -> 16 x 16 latents
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.8, 1.2, 1.0],
    )
    # As Qwen/Qwen-Image scheduler/scheduler_config.json.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    return QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def build_tiny_qwen_image(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny ``QwenImagePipeline`` (4 latent channels; pass height=32, width=32) into ``path``."""
    return build_model_folder(make_qwen_image, path, seed)
