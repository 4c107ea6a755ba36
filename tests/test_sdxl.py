"""Stable Diffusion XL (prefkit/families/sdxl.py) on the built-in ``tiny-sdxl`` (32 px, 2-4 steps, CPU).

The sampling loop against the stock ``StableDiffusionXLPipeline`` (eta 0), stored log-probs against a
recomputation (prompts encoded, and stored embeddings), the LoRA's diffusers round trip, one short
training run per objective, and the time ids Diffusion-DPO conditions on.
"""

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
from prefkit.training.config import TrainConfig
from prefkit.training.run import run_train

PROMPTS = ["a red circle", "a cat on a blue background"]
MODEL = "tiny-sdxl"
LOG2 = math.log(2.0)

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(**kw) -> SamplerSettings:
    base = {"steps": 4, "guidance": 5.0, "noise": 0.0, "height": 32, "width": 32, "negative_prompt": "a dog"}
    base.update(kw)
    return SamplerSettings(**base)


@pytest.fixture(scope="module")
def folder() -> str:
    """tiny-sdxl as --model tiny-sdxl finds it: built on first use into the session's cache."""
    from prefkit.models.tiny import resolve_builtin

    return resolve_builtin(MODEL)


# -- the model and the family ------------------------------------------------------------------------------


def test_tiny_sdxl_loads_with_the_stock_loader_and_is_the_sdxl_family(folder):
    from diffusers import DiffusionPipeline

    from prefkit.families.sdxl import SDXLFamily

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"  # as SDXL base publishes it
    assert pipe.config.force_zeros_for_empty_prompt is True
    assert pipe.unet.config.addition_embed_type == "text_time"
    images = pipe(
        "a cat", num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()  # 32 px by default

    fam = family_of(pipe)
    assert isinstance(fam, SDXLFamily) and fam.name == "sdxl"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the family samples with DDIM...
    assert pipe.scheduler.config.set_alpha_to_one is False  # ...made from Euler's full published config
    assert (fam.sampler_kind, fam.prediction, fam.denoiser_name) == ("ddim", "epsilon", "unet")
    assert fam.default_size() == (32, 32) and fam.latent_shape(32, 48) == (4, 16, 24)
    cond = fam.encode(["a cat"], "a dog")
    # two CLIP encoders' penultimate states side by side (32 + 32), and text_encoder_2's projection
    assert cond.prompt_embeds.shape == (1, 77, 64) and cond.pooled.shape == (1, 32)
    assert cond.negative_prompt_embeds.shape == (1, 77, 64) and cond.negative_pooled.shape == (1, 32)


def test_tiny_sdxl_build_is_deterministic(tmp_path):
    from prefkit.models.tiny_sdxl import build_tiny_sdxl

    def weights(path) -> dict[str, bytes]:
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*.safetensors"))}

    first = weights(build_tiny_sdxl(tmp_path / "a", seed=0))
    assert first and weights(build_tiny_sdxl(tmp_path / "b", seed=0)) == first
    assert weights(build_tiny_sdxl(tmp_path / "c", seed=1)) != first


def test_encoding_and_time_ids_are_the_pipelines(folder):
    """One prompt at a time, prefkit's encoding IS the pipeline's encode_prompt; the time ids are
    _get_add_time_ids' for (original = target = the image size, crop (0, 0)), height first."""
    pipe = load_pipeline(folder)
    fam = family_of(pipe)
    cond = fam.encode([PROMPTS[1]], None)
    pe, _, pooled, _ = pipe.encode_prompt(PROMPTS[1], device="cpu", do_classifier_free_guidance=False)
    assert_close(cond.prompt_embeds, pe, atol=0, rtol=0)
    assert_close(cond.pooled, pooled, atol=0, rtol=0)
    ids = fam.time_ids(32, 48, 3, torch.float32)
    stock = pipe._get_add_time_ids((32, 48), (0, 0), (32, 48), torch.float32, pooled.shape[-1])
    assert_close(ids, stock.repeat(3, 1), atol=0, rtol=0)
    assert ids[0].tolist() == [32, 48, 0, 0, 32, 48]
    # an empty negative prompt is the pipeline's zeros (force_zeros_for_empty_prompt); another is encoded
    empty = fam.encode(PROMPTS, "")
    assert not empty.negative_prompt_embeds.any() and not empty.negative_pooled.any()
    assert fam.encode(PROMPTS, "a dog").negative_prompt_embeds.abs().sum() > 0


def test_float16_vae_decodes_in_float32(folder):
    """force_upcast (SDXL's VAE overflows in float16): the decoder runs in float32, as the pipeline's, and
    the VAE is float16 again afterwards; the images are the float32 model's up to its float16 weights."""
    import numpy as np

    half = load_pipeline(folder, dtype=torch.float16)
    assert half.vae.config.force_upcast
    seen = []
    half.vae.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    images = family_of(half).decode(x)
    assert seen == [torch.float32] and half.vae.dtype == torch.float16
    full = family_of(load_pipeline(folder)).decode(x)
    diff = np.abs(np.asarray(images[0], dtype=int) - np.asarray(full[0], dtype=int)).max()
    assert diff <= 2  # 8-bit pixels: the weights' float16 rounding moves a pixel by at most a level or two


# -- 1. eta 0 reproduces the stock pipeline ------------------------------------------------------------------


@pytest.mark.parametrize(("negative", "height", "width"), [("a dog", 32, 48), ("", 32, 32)])
def test_ddim_eta0_equals_stock_sdxl_pipeline(folder, negative, height, width):
    """Bit equality by construction: the UNet on [uncond, cond] in one batch with the same pooled
    embeddings and time ids, and the same elementwise DDIM arithmetic. A non-square size catches a
    height/width swap in the time ids; the empty negative prompt is the stock call without one (zeros)."""
    pipe = load_pipeline(folder)
    fam = family_of(pipe)
    st = _settings(
        negative_prompt=negative, height=height, width=width, chain_dtype=None, record_logprob=False
    )
    traj = sample(fam, PROMPTS, [11, 12], st)
    c = traj.cond
    negative_kw = {}
    if negative:
        negative_kw = {
            "negative_prompt_embeds": c.negative_prompt_embeds,
            "negative_pooled_prompt_embeds": c.negative_pooled,
        }
    ref = pipe(
        prompt_embeds=c.prompt_embeds,
        pooled_prompt_embeds=c.pooled,
        latents=traj.latents[:, 0],
        height=height,
        width=width,
        num_inference_steps=st.steps,
        eta=0.0,
        output_type="latent",
        **negative_kw,
        **fam.stock_call_kwargs(st.guidance, len(PROMPTS)),
    ).images
    assert_close(traj.latents[:, -1], ref, atol=0, rtol=0)
    # the prompts given as text: the stock pipeline runs text_encoder_2 on the 2 prompts as one batch,
    # prefkit one at a time; the pooled projection rounds differently (2.4e-7), and the pooled embedding
    # reaches every UNet block through the time embedding: 1.9e-5 measured after 4 guided steps at |x| up
    # to ~14 (float32 ulp 9.5e-7: ~20 ulps); 1e-4 is far below any formula error (> 1e-2)
    ref_text = pipe(
        PROMPTS,
        negative_prompt=[negative] * 2 if negative else None,
        latents=traj.latents[:, 0],
        height=height,
        width=width,
        num_inference_steps=st.steps,
        eta=0.0,
        output_type="latent",
        **fam.stock_call_kwargs(st.guidance, len(PROMPTS)),
    ).images
    assert_close(traj.latents[:, -1], ref_text, atol=1e-4, rtol=0)
    assert traj.latents[:, -1].abs().max() > 0.5  # the comparison is not of two near-zero tensors


def test_v_prediction_eta0_equals_stock_sdxl_pipeline(folder):
    """A v-prediction SDXL: the UNet's v is converted to eps (docs/math.md); bit equality with the stock
    DDIM step, which converts v the same way."""
    from diffusers import DDIMScheduler

    pipe = load_pipeline(folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    fam = family_of(pipe)
    st = _settings(chain_dtype=None, record_logprob=False)
    traj = sample(fam, PROMPTS, [3, 4], st)
    c = traj.cond
    ref = pipe(
        prompt_embeds=c.prompt_embeds,
        negative_prompt_embeds=c.negative_prompt_embeds,
        pooled_prompt_embeds=c.pooled,
        negative_pooled_prompt_embeds=c.negative_pooled,
        latents=traj.latents[:, 0],
        num_inference_steps=st.steps,
        guidance_scale=st.guidance,
        eta=0.0,
        output_type="latent",
    ).images
    # prefkit converts v to eps (sqrt(a) v + sqrt(1 - a) x) and takes the eps step; the scheduler forms x0
    # and eps from v by its own float32 operations: 5.2e-6 measured at |x| ~ 3 (~20 ulps); 5e-5 leaves room
    # for other CPUs' rounding and is far below a formula error (a missing conversion moves x by > 1e-1)
    assert_close(traj.latents[:, -1], ref, atol=5e-5, rtol=0)


# -- 2. stored log-probs and embeddings -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(folder, tmp_path_factory) -> Path:
    """prefkit generate --model tiny-sdxl through the real CLI: 2 prompts x 2 samples, 3 steps, 32 x 48 px,
    prompt embeddings stored; labelled with --source jpeg (pairs and per-sample scores)."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    out = tmp_path_factory.mktemp("sdxl") / "ds"
    args = ["generate", "--out", str(out), "--model", MODEL, "--samples-per-prompt", "2", "--steps", "3"]
    args += ["--height", "32", "--width", "48", "--store-embeddings", "--quiet"]
    args += [a for p in PROMPTS for a in ("--prompt", p)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["label", str(out), "--source", "jpeg", "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def test_stored_logprob_equals_recomputed(folder, dataset):
    """Every stored lp recomputed WITH gradients from the stored float16 chain, conditioned by the prompts
    encoded afresh and by the stored embeddings (pooled and zero negative included): equal."""
    from safetensors.torch import load_file as load

    from prefkit.schemas import validate
    from prefkit.shards import iter_samples
    from prefkit.training.trajectories import EmbeddingStore

    manifest = json.loads((dataset / "manifest.json").read_text())
    validate(manifest, "manifest", "manifest.json")
    assert manifest["model"]["family"] == "sdxl" and manifest["model"]["scheduler"] == "DDIMScheduler"
    samples = list(iter_samples(dataset))
    assert len(samples) == 4
    rec = samples[0]["record"]
    validate(rec, "trajectory", "record")
    assert (rec["height"], rec["width"], rec["eta"]) == (32, 48, 1.0)
    pipe = load_pipeline(folder)
    fam = family_of(pipe)
    st = _settings(steps=rec["steps"], guidance=rec["guidance_scale"], noise=rec["eta"], negative_prompt="")
    st.height, st.width = rec["height"], rec["width"]
    schedule = fam.schedule(st.steps, st.height, st.width)
    store = EmbeddingStore(dataset, fam, st)
    stored = load(str(next((dataset / "embeddings").glob("*.safetensors"))))
    assert not stored["negative.prompt_embeds"].any() and not stored["negative.pooled"].any()
    fam.denoiser.requires_grad_(True)
    for s in samples:
        chain = torch.from_numpy(s["latents"]).float()[None]  # [1, K+1, C, h, w]
        fresh = encode(fam, [s["record"]["prompt"]], st)
        kept = store.conditioning([s["record"]["group_id"]])
        assert_close(kept.pooled, fresh.pooled, atol=0, rtol=0)  # the pooled embedding round-trips
        assert_close(kept.prompt_embeds, fresh.prompt_embeds, atol=0, rtol=0)
        for cond in (fresh, kept):
            for k in range(st.steps):
                lp = transition_logprob(fam, chain[:, k], chain[:, k + 1], k, schedule, cond, st)
                assert lp.requires_grad
                # generated in a batch of 4, recomputed alone: batch-dependent float32 kernels may round
                # the UNet's output differently; 1e-6 is a few float32 ulps of |lp| ~ 2
                assert_close(lp.detach(), torch.from_numpy(s["logprobs"][k : k + 1]), atol=1e-6, rtol=0)
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fam.denoiser.parameters())


# -- 3. the LoRA in diffusers format ---------------------------------------------------------------------------


def test_saved_lora_reproduces_the_policy(folder, tmp_path):
    from prefkit.training.lora import add_lora, save_lora

    pipe = load_pipeline(folder)
    fam = family_of(pipe)
    torch.manual_seed(0)
    add_lora(fam.denoiser, TrainConfig(lora_rank=4, lora_alpha=4.0), fam)
    wrapped = {n.split(".lora_A")[0] for n, _ in fam.denoiser.named_parameters() if ".lora_A" in n}
    defaults = (".to_q", ".to_k", ".to_v", ".to_out.0")  # the UNet's attention projections, nothing else
    assert wrapped and all(n.endswith(defaults) for n in wrapped)
    assert {d for d in defaults if any(n.endswith(d) for n in wrapped)} == set(defaults)
    with torch.no_grad():  # a trained-looking adapter: B matrices away from their zero init
        for name, p in fam.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    st = _settings(steps=3, noise=1.0)
    policy = sample(fam, [PROMPTS[0]], [1], st).latents
    base = sample(family_of(load_pipeline(folder)), [PROMPTS[0]], [1], st).latents
    assert (policy - base).abs().max() > 1e-2  # the adapter matters

    save_lora(pipe, fam.denoiser, tmp_path)
    fresh = load_pipeline(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # peft warns when adapter weights are left out
        fresh.load_lora_weights(str(tmp_path))
    assert torch.equal(sample(family_of(fresh), [PROMPTS[0]], [1], st).latents, policy)
    checked = load_pipeline(folder, lora=str(tmp_path))  # prefkit's loader: every tensor arrived
    assert torch.equal(sample(family_of(checked), [PROMPTS[0]], [1], st).latents, policy)


# -- 4. training: one short run per objective ----------------------------------------------------------------


def _train(dataset, out: Path, **kw) -> list[dict]:
    kw.setdefault("max_steps", 2)
    kw.setdefault("batch_size", 2)
    kw.setdefault("checkpoint_every", 0)
    run_train(TrainConfig(dataset=str(dataset), out=str(out), quiet=True, **kw))
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def _lora_b_max(out: Path) -> float:
    t = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    return max(float(v.abs().max()) for k, v in t.items() if "lora_B" in k)


@pytest.mark.parametrize(
    ("objective", "extra"),
    [("d3po", {}), ("dense", {}), ("d3po", {"kl_coef": 1.0}), ("ddpo", {}), ("tdpo", {})],
    ids=["d3po", "dense", "d3po-kl", "ddpo", "tdpo"],
)
def test_training_smoke(dataset, tmp_path, objective, extra):
    out = tmp_path / "o"
    m = _train(dataset, out, objective=objective, lr=1e-3, **extra)
    assert [line["step"] for line in m] == [1, 2]
    assert all(math.isfinite(line["loss"]) for line in m), m
    if objective in ("d3po", "dense"):
        assert m[0]["loss"] == pytest.approx(LOG2, abs=1e-6)  # policy == reference at step 1
    if "kl_coef" in extra:
        assert m[0]["kl"] == 0.0 and m[1]["kl"] > 0  # adapters on (B = 0) and off agree, then differ
    if objective in ("ddpo", "tdpo"):
        assert abs(m[0]["log_ratio"]) < 1e-6  # the policy is the sampler at step 1
    assert _lora_b_max(out) > 1e-4  # the LoRA changed (B starts at zero)


def test_trained_lora_loads_with_load_lora_weights(dataset, folder, tmp_path):
    """A trained LoRA (prefkit train on tiny-sdxl) into a fresh stock pipeline: every trained tensor
    arrives unchanged, and the pipeline's samples change."""
    from diffusers import DiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    out = tmp_path / "o"
    _train(dataset, out, objective="d3po", lr=1e-2, lora_rank=4, checkpoint_every=2)
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def latents():
        gen = torch.Generator().manual_seed(0)
        return pipe("a red circle", num_inference_steps=2, generator=gen, output_type="latent").images

    before = latents()
    pipe.load_lora_weights(str(out / "lora"))
    assert (latents() - before).abs().max() > 1e-4
    (name,) = list(pipe.unet.peft_config)
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name=name)
    trained = load_file(str(out / "checkpoint-2" / "lora_peft.safetensors"))
    assert loaded.keys() == trained.keys()
    for key, value in trained.items():
        assert_close(loaded[key], value, atol=0, rtol=0, msg=key)


# -- 5. Diffusion-DPO on image pairs: conditioned on the training resolution --------------------------------


def _image_bytes(colour, seed: int, size: int = 32) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_diffusion_dpo_conditions_on_the_training_resolution(folder, tmp_path, monkeypatch):
    """Every UNet call of a Diffusion-DPO step gets time ids (res, res, 0, 0, res, res) for the training
    resolution -- not the model's default size -- as the Diffusion-DPO authors' SDXL training does
    (SalesforceAIResearch/DiffusionDPO, train.py); the loss is log 2 at step 1, then the LoRA moves."""
    import pandas as pd

    from prefkit.families.sdxl import SDXLFamily

    rows = [
        {
            "caption": f"a square number {i}",
            "jpg_0": _image_bytes((220, 30, 30), i),
            "jpg_1": _image_bytes((30, 30, 220), 100 + i),
            "label_0": label,
        }
        for i, label in enumerate([1.0, 0.0, 1.0])
    ]
    data = tmp_path / "pairs.parquet"
    pd.DataFrame(rows).to_parquet(data)
    seen: list[list[float]] = []
    original = SDXLFamily.time_ids

    def spy(self, height, width, n, dtype):
        ids = original(self, height, width, n, dtype)
        seen.extend(ids.tolist())
        return ids

    monkeypatch.setattr(SDXLFamily, "time_ids", spy)
    out = tmp_path / "o"
    m = _train(data, out, objective="diffusion-dpo", model=MODEL, resolution=48, lr=1e-3)
    assert seen and all(row == [48, 48, 0, 0, 48, 48] for row in seen), seen[:3]
    assert m[0]["loss"] == pytest.approx(LOG2, abs=1e-6) and m[0]["err_diff_w"] == 0
    assert all(math.isfinite(line["loss"]) for line in m)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["beta"] == 5000.0 and summary["resolution"] == 48  # the epsilon family's default beta
    assert _lora_b_max(out) > 1e-4


# -- 6. the benchmark runs ---------------------------------------------------------------------------------------


def test_bench_generate_runs_on_tiny_sdxl(folder):
    from prefkit.bench import bench_generate

    fig = bench_generate(MODEL, steps=2, batch_size=2, repeats=1)
    s = fig.summary()
    assert "sdxl" in s["figure"] and s["measured"] > 0 and s["baseline_measured"] > 0
