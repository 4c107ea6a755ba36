"""Z-Image (ZImagePipeline) through prefkit, on the built-in tiny-z-image (32 px, 2-3 steps): the stock
pipeline's latents at noise level 0 (with and without CFG), stored log-probs against recomputation
(prompt encoders and stored embeddings of prompts of their own lengths), a LoRA round trip through
load_lora_weights, ``prefkit generate`` end to end, and short ``prefkit train`` runs per objective."""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from prefkit.families import family_of, load_pipeline
from prefkit.sampling import SamplerSettings, encode, sample, transition_logprob

# 3, 2 and 10 prompt words: with the chat template's 8 tokens, 11, 10 and 18 tokens of their own lengths
PROMPTS = ["a red circle", "a cat", "a blue square on a white background with a dog"]
LOG2 = math.log(2.0)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zimage(tmp_path_factory) -> str:
    from prefkit.models.tiny import BUILTIN_MODELS

    return BUILTIN_MODELS["tiny-z-image"](tmp_path_factory.mktemp("models") / "zimage")


def _cli(args) -> str:
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def zimage_data(zimage, tmp_path_factory) -> Path:
    """``prefkit generate``: 3 prompts of 3 lengths x 3 samples, 2 steps, CFG on (guidance 4 = the
    pipeline's guidance_scale 3), batches of 4 (mixed lengths), embeddings stored; ``prefkit label
    --source jpeg`` (per-sample scores and pairs)."""
    out = tmp_path_factory.mktemp("data") / "zimage"
    args = ["generate", "--out", out, "--model", zimage, "--samples-per-prompt", 3, "--steps", 2]
    args += ["--height", 32, "--width", 32, "--batch-size", 4, "--guidance", 4, "--store-embeddings"]
    args += ["--quiet", *[a for p in PROMPTS for a in ("--prompt", p)]]
    _cli(args)
    _cli(["label", out, "--source", "jpeg", "--quiet"])
    return out


def _settings(**kw) -> SamplerSettings:
    base = {"steps": 3, "guidance": 4.0, "noise": 0.0, "height": 32, "width": 32, "negative_prompt": "a dog"}
    return SamplerSettings(**{**base, **kw})


def test_tiny_z_image_loads_with_the_stock_loader(zimage):
    """DiffusionPipeline.from_pretrained gives a ZImagePipeline; its chat template wraps a prompt as
    Qwen3's does (thinking on), each prompt word one token; the family's sizes follow the pipeline."""
    from diffusers import DiffusionPipeline

    from prefkit.families.z_image import ZImageFamily

    pipe = DiffusionPipeline.from_pretrained(zimage)
    assert type(pipe).__name__ == "ZImagePipeline" and type(pipe.text_encoder).__name__ == "Qwen3Model"
    text = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a zebra"}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=True,
    )
    assert text == "<|im_start|>user\na zebra<|im_end|>\n<|im_start|>assistant\n"
    assert pipe.tokenizer.tokenize(text)[3:5] == ["a", "Ġzebra"]
    fam = family_of(load_pipeline(zimage))
    assert isinstance(fam, ZImageFamily) and fam.name == "z-image"
    assert fam.latent_shape(32, 32) == (16, 16, 16) and fam.size_multiple() == 4
    assert fam.max_size() == 512 * 2 * 2  # the rotary table's 512 heights / widths, 2 x 2 patches, VAE x2
    assert fam.default_size() == (256, 256)  # 128 latent pixels, as the pipeline's 1024 px with a VAE x8


def test_build_is_deterministic(zimage, tmp_path):
    """The same seed writes the same weights, byte for byte; another seed other weights."""
    from prefkit.models.tiny import BUILTIN_MODELS

    def weights(folder) -> dict[str, bytes]:
        return {
            str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*.safetensors"))
        }

    first = weights(zimage)
    assert len(first) == 3  # text encoder, transformer, VAE
    assert weights(BUILTIN_MODELS["tiny-z-image"](tmp_path / "again", seed=0)) == first
    assert weights(BUILTIN_MODELS["tiny-z-image"](tmp_path / "other", seed=1)) != first


def test_z_image_img2img_is_refused_with_the_supported_list(zimage):
    """Only the text-to-image pipeline is a family: Z-Image's img2img pipeline, made of the same parts,
    gets the error that lists the supported pipeline classes."""
    from diffusers import ZImageImg2ImgPipeline

    from prefkit.errors import PrefkitError

    img2img = ZImageImg2ImgPipeline(**load_pipeline(zimage).components)
    with pytest.raises(PrefkitError, match="ZImageImg2ImgPipeline is not supported.*ZImagePipeline"):
        family_of(img2img)


@pytest.mark.parametrize("guidance", [4.0, 1.0], ids=["cfg", "no-cfg"])
def test_noise0_equals_stock_z_image_pipeline(zimage, guidance):
    """Bit equality by construction: ZImagePipeline runs the conditional and unconditional halves as one
    transformer call of 2B (conditional first), on each prompt's own tokens, with the timestep 1 - sigma
    and the negated output, and so does prefkit; --guidance w is the pipeline's guidance_scale w - 1
    (w = 1: guidance_scale 0, Z-Image-Turbo's setting, one call of B)."""
    from prefkit.families.z_image import _captions

    pipe = load_pipeline(zimage)
    fam = family_of(pipe)
    st = _settings(guidance=guidance, chain_dtype=None, record_logprob=False)
    traj = sample(fam, PROMPTS, [5, 6, 7], st)
    c = traj.cond
    assert c.prompt_mask is not None and c.prompt_mask.sum(1).tolist() == [11, 10, 18]
    common = {"height": 32, "width": 32, "num_inference_steps": st.steps, "output_type": "latent"}
    common |= fam.stock_call_kwargs(st.guidance, len(PROMPTS))
    assert common["guidance_scale"] == guidance - 1.0
    neg = None if c.negative_prompt_embeds is None else _captions(c.negative_prompt_embeds, None)
    ref = pipe(
        prompt_embeds=_captions(c.prompt_embeds, c.prompt_mask),
        negative_prompt_embeds=neg,
        latents=traj.latents[:, 0].clone(),
        **common,
    ).images
    assert_close(traj.latents[:, -1], ref, atol=0, rtol=0)
    # the prompts as text: the pipeline encodes the 3 prompts as one batch, prefkit one at a time;
    # batched float32 kernels may round differently (~1e-7 relative per op over 2 layers and 3 steps:
    # 1e-5 is ~100 float32 ulps of |x| ~ 1, far below any formula error)
    negative = [st.negative_prompt] * 3 if st.guided else None
    # a copy: ZImagePipeline._encode_prompt writes the templated prompts into the list it is given
    prompts = list(PROMPTS)
    ref_text = pipe(prompts, negative_prompt=negative, latents=traj.latents[:, 0].clone(), **common).images
    assert prompts != PROMPTS
    assert_close(traj.latents[:, -1], ref_text, atol=1e-5, rtol=1e-5)


def test_a_padded_batch_predicts_as_each_prompt_alone(zimage):
    """The list of each prompt's own tokens makes the padding invisible: each row of a batch gets its own
    prompt's prediction (up to batched-kernel rounding: 1e-5 on outputs of size ~1)."""
    fam = family_of(load_pipeline(zimage))
    st = _settings(noise=0.7)
    schedule = fam.schedule(3, 32, 32)
    x = torch.randn(3, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        both = fam.model_output(x, 1, schedule, encode(fam, PROMPTS, st), st.guidance)
        for i, p in enumerate(PROMPTS):
            alone = fam.model_output(x[i : i + 1], 1, schedule, encode(fam, [p], st), st.guidance)
            assert_close(both[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_stored_logprob_equals_recomputed_with_gradients(zimage, zimage_data):
    """Every stored lp (sampled by prefkit generate in padded batches of 4, CFG on) recomputed WITH
    gradients, one sample at a time from the stored float16 chain, through the text encoder and through
    the stored embeddings."""
    from prefkit.shards import iter_samples
    from prefkit.training.trajectories import EmbeddingStore

    samples = list(iter_samples(zimage_data))
    assert len(samples) == 9
    fam = family_of(load_pipeline(zimage))
    rec = samples[0]["record"]
    assert rec["guidance_scale"] == 4.0
    st = _settings(
        steps=rec["steps"], guidance=rec["guidance_scale"], noise=rec["noise_level"], negative_prompt=""
    )
    schedule = fam.schedule(st.steps, 32, 32)
    assert_close(schedule.timesteps.numpy(), samples[0]["timesteps"], check_dtype=True)
    store = EmbeddingStore(zimage_data, fam, st)
    fam.denoiser.requires_grad_(True)
    for s in samples:
        chain = torch.from_numpy(s["latents"]).float()[None]
        cond = encode(fam, [s["record"]["prompt"]], st)
        stored = store.conditioning([s["record"]["group_id"]])
        assert torch.equal(stored.prompt_embeds, cond.prompt_embeds)  # the prompt's own tokens
        assert stored.guided and torch.equal(stored.negative_prompt_embeds, cond.negative_prompt_embeds)
        for k in range(st.steps):
            for c in (cond, stored):
                lp = transition_logprob(fam, chain[:, k], chain[:, k + 1], k, schedule, c, st)
                assert lp.requires_grad
                # sampled in a padded batch of 4, recomputed alone: a few float32 ulps of |lp| ~ 2
                assert_close(lp.detach(), torch.from_numpy(s["logprobs"][k : k + 1]), atol=1e-6, rtol=0)
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fam.denoiser.parameters())
    mixed = store.conditioning([0, 1, 2])  # stored prompts of 3 lengths, batched: padded, with the mask
    assert mixed.prompt_mask is not None and mixed.prompt_mask.sum(1).tolist() == [11, 10, 18]


def test_generate_records_the_family_and_cfg(zimage_data):
    manifest = json.loads((zimage_data / "manifest.json").read_text())
    assert manifest["model"]["family"] == "z-image"
    assert manifest["sampler"]["guidance_mode"] == "cfg"


def test_saved_lora_reproduces_the_policy(zimage, tmp_path):
    """A LoRA on every attention projection (refiners and main layers), saved in diffusers format, loads
    into a fresh pipeline with load_lora_weights (nothing left out) and with prefkit's checked loader,
    and samples exactly as the policy did."""
    from prefkit.training.config import TrainConfig
    from prefkit.training.lora import add_lora, save_lora

    pipe = load_pipeline(zimage)
    fam = family_of(pipe)
    torch.manual_seed(0)
    add_lora(fam.denoiser, TrainConfig(lora_rank=4, lora_alpha=4.0), fam)
    names = {n for n, _ in fam.denoiser.named_modules() if n.endswith("lora_A")}
    for part in ("noise_refiner.0", "context_refiner.0", "layers.1"):
        assert any(n.startswith(f"{part}.attention.to_q.") for n in names), part
    assert any(".attention.to_out.0." in n for n in names)
    with torch.no_grad():
        for name, p in fam.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    st = _settings(noise=0.7, steps=2)
    policy = sample(fam, PROMPTS[:2], [1, 2], st).latents
    base = sample(family_of(load_pipeline(zimage)), PROMPTS[:2], [1, 2], st).latents
    assert (policy - base).abs().max() > 1e-2
    save_lora(pipe, fam.denoiser, tmp_path)
    fresh = load_pipeline(zimage)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # peft warns when adapter weights are left out
        fresh.load_lora_weights(str(tmp_path))
    assert torch.equal(sample(family_of(fresh), PROMPTS[:2], [1, 2], st).latents, policy)
    checked = load_pipeline(zimage, lora=str(tmp_path))
    assert torch.equal(sample(family_of(checked), PROMPTS[:2], [1, 2], st).latents, policy)


def _lora_b_max(out: Path) -> float:
    t = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    return max(float(v.abs().max()) for k, v in t.items() if "lora_B" in k)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["d3po", "dense", "ddpo", "tdpo"])
def test_trajectory_objectives_train(zimage_data, tmp_path, objective):
    """``prefkit train`` for two optimizer steps on the stored padded embeddings (no text encoder):
    finite losses, d3po / dense at log 2 and ddpo / tdpo at log-ratio 0 on step 1 (policy = reference
    = sampler), a moved LoRA."""
    out = tmp_path / objective
    args = ["train", zimage_data, "--out", out, "--objective", objective, "--max-steps", 2]
    _cli([*args, "--batch-size", 2, "--lr", "1e-3", "--checkpoint-every", 0, "--quiet"])
    m = _metrics(out)
    assert [line["step"] for line in m] == [1, 2]
    assert all(math.isfinite(line["loss"]) for line in m), m
    if objective in ("d3po", "dense"):
        assert m[0]["loss"] == pytest.approx(LOG2, abs=1e-6)
    else:
        assert abs(m[0]["log_ratio"]) < 1e-6
    assert _lora_b_max(out) > 0


def test_diffusion_dpo_trains(zimage, tmp_path):
    """``prefkit train --objective diffusion-dpo`` on two Pick-a-Pic-format pairs of 32 px images: loss
    log 2 at step 1 (policy = reference), finite losses, a moved LoRA."""
    import pandas as pd
    from PIL import Image

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
    args = ["train", data, "--out", out, "--objective", "diffusion-dpo", "--model", zimage]
    args += ["--resolution", 32, "--max-steps", 2, "--batch-size", 2, "--lr", "1e-3"]
    _cli([*args, "--checkpoint-every", 0, "--quiet"])
    m = _metrics(out)
    assert m[0]["loss"] == pytest.approx(LOG2, abs=1e-6)
    assert len(m) == 2 and all(math.isfinite(line["loss"]) for line in m)
    assert _lora_b_max(out) > 0


def test_bench_generate_runs_on_tiny_z_image(zimage):
    from prefkit.bench import bench_generate

    fig = bench_generate(zimage, steps=2, batch_size=2, repeats=1, height=32, width=32)
    s = fig.summary()
    assert "z-image" in s["figure"] and s["measured"] > 0 and s["baseline_measured"] > 0
