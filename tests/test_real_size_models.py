"""Real-size random-weight models (sd15-random, sd3-medium-random, sdxl-random, qwen-image-random,
z-image-turbo-random): their architectures are the published ones. Checked on the meta device (shapes
only, nothing allocated), so the test is fast; nothing real-size is built or run here."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from prefkit.models import real_size, tiny  # noqa: E402


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("sd15-random", 859_520_964),  # runwayml/stable-diffusion-v1-5 UNet ("860M")
        ("sd3-medium-random", 2_028_328_000),  # stabilityai/stable-diffusion-3-medium transformer ("2B")
        # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json built on the meta device: 2,567,463,684
        # (the count quoted for SDXL base's UNet; the SDXL paper, arXiv 2307.01952, says "2.6B")
        ("sdxl-random", 2_567_463_684),
        # Qwen/Qwen-Image transformer/config.json (60 layers, 24 heads of 128, joint dim 3584): "20B"
        ("qwen-image-random", 20_430_401_088),
        # Tongyi-MAI/Z-Image-Turbo transformer/config.json (30 layers + 2 noise- and 2 context-refiner
        # layers, dim 3840, 30 heads, caption features 2560): "6B"; the count reported for its weights
        ("z-image-turbo-random", 6_154_908_736),
    ],
)
def test_denoiser_parameter_count_is_the_published_one(name, published):
    assert real_size.PUBLISHED_DENOISER_PARAMETERS[name] == published
    assert real_size.denoiser_parameters(name) == published


def test_shapes_agree_across_components():
    """What must agree for the pipelines to run (a mismatch fails only at inference, not at load)."""
    assert real_size.SD15_UNET["cross_attention_dim"] == real_size.CLIP_L_TEXT["hidden_size"]
    assert real_size.SD15_UNET["in_channels"] == real_size.SD15_VAE["latent_channels"]
    vae_down = 2 ** (len(real_size.SD15_VAE["block_out_channels"]) - 1)
    assert real_size.SD15_UNET["sample_size"] * vae_down == real_size.SD15_VAE["sample_size"] == 512
    t = real_size.SD3_TRANSFORMER
    assert t["joint_attention_dim"] == real_size.T5_REDUCED["d_model"]
    assert t["pooled_projection_dim"] == (
        real_size.CLIP_L_TEXT["projection_dim"] + real_size.CLIP_G_TEXT["projection_dim"]
    )
    assert t["in_channels"] == real_size.SD3_VAE["latent_channels"] == 16
    assert t["sample_size"] * 2 ** (len(real_size.SD3_VAE["block_out_channels"]) - 1) == 1024
    u = real_size.SDXL_UNET
    # SDXL: prompt embeddings are CLIP-L's and bigG's hidden states side by side; the added embedding is
    # 6 time ids x addition_time_embed_dim + bigG's projected (pooled) text embedding
    assert (
        u["cross_attention_dim"]
        == real_size.CLIP_L_TEXT["hidden_size"] + real_size.CLIP_G_TEXT["hidden_size"]
    )
    assert u["projection_class_embeddings_input_dim"] == (
        6 * u["addition_time_embed_dim"] + real_size.CLIP_G_TEXT["projection_dim"]
    )
    assert u["in_channels"] == real_size.SDXL_VAE["latent_channels"] == 4
    assert u["sample_size"] * 2 ** (len(real_size.SDXL_VAE["block_out_channels"]) - 1) == 1024


def test_qwen_image_parts_fit_together_on_the_meta_device():
    """The reduced text encoder's width is the transformer's joint dim; the VAE's z_dim x 4 (2x2 packing)
    its input; model_index.json names QwenImagePipeline (assembled on the meta device: nothing allocated)."""
    import torch

    t = real_size.QWEN_IMAGE_TRANSFORMER
    assert t["joint_attention_dim"] == real_size.QWEN_VL_TEXT_REDUCED["hidden_size"]
    assert t["in_channels"] == 4 * real_size.QWEN_IMAGE_VAE["z_dim"] == 4 * t["out_channels"]
    cls_name, parts = real_size._PARTS["qwen-image-random"]()
    assert cls_name == "QwenImagePipeline"
    with torch.device("meta"):
        te = parts["text_encoder"]()
    assert te.config.text_config.hidden_size == 3584


def test_z_image_parts_fit_together_on_the_meta_device():
    """The reduced Qwen3's width is the transformer's caption width; the head dim is the RoPE axes' sum;
    the VAE's channels are the transformer's input; model_index.json names ZImagePipeline."""
    import torch

    t = real_size.Z_IMAGE_TRANSFORMER
    assert t["cap_feat_dim"] == real_size.QWEN3_TEXT_REDUCED["hidden_size"]
    assert t["dim"] // t["n_heads"] == sum(t["axes_dims"]) == 128
    assert t["in_channels"] == real_size.Z_IMAGE_VAE["latent_channels"] == 16
    cls_name, parts = real_size._PARTS["z-image-turbo-random"]()
    assert cls_name == "ZImagePipeline"
    with torch.device("meta"):
        te = parts["text_encoder"]()
    assert te.config.hidden_size == 2560 and te.config.num_hidden_layers == 2


def test_names_are_builtin_without_building():
    for name in real_size.REAL_SIZE_MODELS:
        assert name in tiny.BUILTIN_MODELS
