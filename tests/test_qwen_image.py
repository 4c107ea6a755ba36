"""Qwen-Image (QwenImagePipeline) through prefkit, on the built-in tiny-qwen-image (32 px, 2-3 steps):
the stock pipeline's latents at noise level 0, stored log-probs against recomputation (prompt encoders
and stored, padded embeddings), a LoRA round trip through load_lora_weights, and short training runs."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from prefkit.families import family_of, load_pipeline
from prefkit.sampling import SamplerSettings, encode, sample, transition_logprob

# different token counts (3, 2 and 10 prompt tokens, then the 5 of the template's end): a batch of them is padded, with a mask
PROMPTS = ["a red circle", "a cat", "a blue square on a white background with a dog"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> str:
    from prefkit.models.tiny import BUILTIN_MODELS

    return BUILTIN_MODELS["tiny-qwen-image"](tmp_path_factory.mktemp("models") / "qwen")


@pytest.fixture(scope="module")
def qwen_data(qwen, tmp_path_factory) -> Path:
    """3 prompts of 3 lengths x 3 samples, 2 steps, batches of 4 (mixed lengths), embeddings stored,
    labelled with --source jpeg (per-sample scores and pairs)."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    out = tmp_path_factory.mktemp("data") / "qwen"
    args = ["generate", "--out", out, "--model", qwen, "--samples-per-prompt", 3, "--steps", 2]
    args += ["--height", 32, "--width", 32, "--batch-size", 4, "--store-embeddings", "--quiet"]
    args += [a for p in PROMPTS for a in ("--prompt", p)]
    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["label", str(out), "--source", "jpeg", "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


def _settings(**kw) -> SamplerSettings:
    base = {"steps": 3, "guidance": 4.0, "noise": 0.0, "height": 32, "width": 32, "negative_prompt": "a dog"}
    return SamplerSettings(**{**base, **kw})


def test_the_tiny_tokenizer_keeps_the_pipelines_template_offsets(qwen):
    """The template's system part is 34 tokens, as with Qwen's real tokenizer: the pipeline's
    prompt_template_encode_start_idx drops exactly the template, and each prompt word is one token."""
    pipe = load_pipeline(qwen)
    tok = pipe.tokenizer
    start = pipe.prompt_template_encode_start_idx
    ids = tok(pipe.prompt_template_encode.format("a zebra"))["input_ids"]
    assert tok.convert_ids_to_tokens(ids[start : start + 2]) == ["a", "Ġzebra"]
    assert tok.convert_ids_to_tokens(ids[start - 1 : start]) == ["Ċ"]  # "user\n" ends the dropped part
    fam = family_of(pipe)
    assert fam.latent_shape(32, 32) == (4, 16, 16) and fam.size_multiple() == 4
    assert fam.max_size() == 2 * (4096 - 1024) * 2 * 2  # rotary table: n/2 + 1024 text tokens <= 4096


def test_noise0_equals_stock_qwen_image_pipeline(qwen):
    """Bit equality by construction: QwenImagePipeline's true CFG runs the conditional and unconditional
    passes as two calls of B, and so does prefkit, with the same norm-preserving rescale over each packed
    token's channels and the same padded embeddings and mask."""
    pipe = load_pipeline(qwen)
    fam = family_of(pipe)
    st = _settings(chain_dtype=None, record_logprob=False)
    traj = sample(fam, PROMPTS, [5, 6, 7], st)
    c = traj.cond
    assert c.prompt_mask is not None and c.prompt_mask.sum(1).tolist() == [8, 7, 15]
    x_t = traj.latents[:, 0]
    common = {"true_cfg_scale": st.guidance, "latents": fam.pack(x_t), "height": 32, "width": 32}
    common |= {"num_inference_steps": st.steps, "output_type": "latent"}
    ref = pipe(
        prompt_embeds=c.prompt_embeds,
        prompt_embeds_mask=c.prompt_mask,
        negative_prompt_embeds=c.negative_prompt_embeds,
        **common,
    ).images
    assert_close(traj.latents[:, -1], fam.unpack(ref, 16, 16), atol=0, rtol=0)
    # the prompts as text: the pipeline encodes the 3 prompts as one padded batch, prefkit one at a time;
    # batched float32 kernels may round differently (~1e-7 relative per op over 2 layers and 3 steps:
    # 1e-5 is ~100 float32 ulps of |x| ~ 1, far below any formula error)
    ref_text = pipe(PROMPTS, negative_prompt=[st.negative_prompt] * 3, **common).images
    assert_close(traj.latents[:, -1], fam.unpack(ref_text, 16, 16), atol=1e-5, rtol=1e-5)


def test_pack_is_the_pipelines(qwen):
    from diffusers import QwenImagePipeline

    from prefkit.families.qwen_image import QwenImageFamily

    x = torch.randn(2, 4, 8, 6)
    packed = QwenImagePipeline._pack_latents(x, 2, 4, 8, 6)
    assert torch.equal(QwenImageFamily.pack(x), packed)
    assert torch.equal(QwenImageFamily.unpack(packed, 8, 6), x)


def test_a_padded_batch_predicts_as_each_prompt_alone(qwen):
    """The mask makes padding invisible: each row of a padded batch gets its own prompt's prediction (up
    to batched-kernel rounding: 1e-5 on outputs of size ~1)."""
    fam = family_of(load_pipeline(qwen))
    st = _settings(noise=0.7)
    schedule = fam.schedule(3, 32, 32)
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        both = fam.model_output(x, 1, schedule, encode(fam, PROMPTS, st), st.guidance)
        for i, p in enumerate(PROMPTS):
            alone = fam.model_output(x[i : i + 1], 1, schedule, encode(fam, [p], st), st.guidance)
            assert_close(both[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_stored_logprob_equals_recomputed_with_gradients(qwen, qwen_data):
    """Every stored lp (sampled in padded batches of 4) recomputed WITH gradients, one sample at a time
    from the stored float16 chain, through the text encoder and through the stored embeddings."""
    from prefkit.shards import iter_samples
    from prefkit.training.trajectories import EmbeddingStore

    samples = list(iter_samples(qwen_data))
    assert len(samples) == 9
    fam = family_of(load_pipeline(qwen))
    rec = samples[0]["record"]
    st = _settings(
        steps=rec["steps"], guidance=rec["guidance_scale"], noise=rec["noise_level"], negative_prompt=""
    )
    schedule = fam.schedule(st.steps, 32, 32)
    assert_close(schedule.timesteps.numpy(), samples[0]["timesteps"], check_dtype=True)
    store = EmbeddingStore(qwen_data, fam, st)
    fam.denoiser.requires_grad_(True)
    for s in samples:
        chain = torch.from_numpy(s["latents"]).float()[None]
        cond = encode(fam, [s["record"]["prompt"]], st)
        stored = store.conditioning([s["record"]["group_id"]])
        assert torch.equal(stored.prompt_embeds, cond.prompt_embeds)  # trimmed to the prompt's own tokens
        for k in range(st.steps):
            for c in (cond, stored):
                lp = transition_logprob(fam, chain[:, k], chain[:, k + 1], k, schedule, c, st)
                assert lp.requires_grad
                # sampled in a padded batch of 4, recomputed alone: a few float32 ulps of |lp| ~ 2
                assert_close(lp.detach(), torch.from_numpy(s["logprobs"][k : k + 1]), atol=1e-6, rtol=0)
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fam.denoiser.parameters())
    # stored embeddings of prompts of 3 lengths, batched: padded again, with the mask
    mixed = store.conditioning([0, 1, 2])
    assert mixed.prompt_mask is not None and mixed.prompt_mask.sum(1).tolist() == [8, 7, 15]


def test_saved_lora_reproduces_the_policy(qwen, tmp_path):
    from prefkit.training.config import TrainConfig
    from prefkit.training.lora import add_lora, save_lora

    pipe = load_pipeline(qwen)
    fam = family_of(pipe)
    torch.manual_seed(0)
    add_lora(fam.denoiser, TrainConfig(lora_rank=4, lora_alpha=4.0), fam)
    names = {n for n, _ in fam.denoiser.named_modules() if n.endswith("lora_A")}
    assert any(".attn.add_q_proj." in n for n in names) and any(".attn.to_add_out." in n for n in names)
    with torch.no_grad():
        for name, p in fam.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    st = _settings(noise=0.7, steps=2)
    policy = sample(fam, PROMPTS[:2], [1, 2], st).latents
    base = sample(family_of(load_pipeline(qwen)), PROMPTS[:2], [1, 2], st).latents
    assert (policy - base).abs().max() > 1e-2
    save_lora(pipe, fam.denoiser, tmp_path)
    fresh = load_pipeline(qwen)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fresh.load_lora_weights(str(tmp_path))
    assert torch.equal(sample(family_of(fresh), PROMPTS[:2], [1, 2], st).latents, policy)


def _lora_b_max(out: Path) -> float:
    t = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    return max(float(v.abs().max()) for k, v in t.items() if "lora_B" in k)


def _losses(out: Path) -> list[float]:
    import json

    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["d3po", "dense", "ddpo", "tdpo"])
def test_trajectory_objectives_train(qwen_data, tmp_path, objective):
    """Two optimizer steps on stored padded embeddings (no text encoder): finite losses, a moved LoRA."""
    from prefkit.training.config import TrainConfig
    from prefkit.training.run import run_train

    out = tmp_path / objective
    common = {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 0, "quiet": True}
    run_train(TrainConfig(dataset=str(qwen_data), out=str(out), objective=objective, **common))
    losses = _losses(out)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert _lora_b_max(out) > 0


def test_diffusion_dpo_trains(qwen, tmp_path):
    """Diffusion-DPO on two Pick-a-Pic-format pairs of 32 px images: finite losses, a moved LoRA."""
    import pandas as pd
    from PIL import Image

    from prefkit.training.config import TrainConfig
    from prefkit.training.run import run_train

    def png(colour) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(buf, "PNG")
        return buf.getvalue()

    rows = [
        {"caption": p, "jpg_0": png((200, 30, 30)), "jpg_1": png((30, 30, 200)), "label_0": 1.0}
        for p in PROMPTS[:2]
    ]
    data = tmp_path / "pairs.parquet"
    pd.DataFrame(rows).to_parquet(data)
    out = tmp_path / "o"
    common = {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 0, "quiet": True}
    run_train(
        TrainConfig(
            dataset=str(data), out=str(out), objective="diffusion-dpo", model=qwen, resolution=32, **common
        )
    )
    losses = _losses(out)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert _lora_b_max(out) > 0
