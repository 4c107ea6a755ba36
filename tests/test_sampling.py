"""The sampling loop against the stock diffusers pipelines, and stored log-probs against recomputation."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from prefkit.families import family_of, load_pipeline
from prefkit.sampling import SamplerSettings, encode, sample, transition_logprob

PROMPTS = ["a red circle", "a cat on a blue background"]


def _settings(**kw) -> SamplerSettings:
    base = {"steps": 5, "guidance": 5.0, "noise": 0.0, "height": 32, "width": 32, "negative_prompt": "a dog"}
    base.update(kw)
    return SamplerSettings(**base)


def test_ddim_eta0_equals_stock_stable_diffusion_pipeline(tiny_models):
    """Bit equality holds by construction: both run the UNet on the batch [uncond, cond] and the same
    elementwise DDIM arithmetic (correctly rounded on every CPU)."""
    pipe = load_pipeline(tiny_models["ddim"])
    fam = family_of(pipe)
    st = _settings(chain_dtype=None, record_logprob=False)
    traj = sample(fam, PROMPTS, [11, 12], st)
    cond = traj.cond
    ref = pipe(
        prompt_embeds=cond.prompt_embeds,
        negative_prompt_embeds=cond.negative_prompt_embeds,
        latents=traj.latents[:, 0],
        num_inference_steps=st.steps,
        guidance_scale=st.guidance,
        eta=0.0,
        output_type="latent",
    ).images
    assert_close(traj.latents[:, -1], ref, atol=0, rtol=0)
    # the same with the prompts given as text: the stock pipeline encodes the 2 prompts as one batch, prefkit
    # one at a time, so the text encoder's batched float32 kernels round differently (~1e-7 relative per op
    # over a few layers and 5 steps: 1e-5 is ~100 float32 ulps of |x| ~ 1, far below any formula error)
    ref_text = pipe(
        PROMPTS,
        negative_prompt=[st.negative_prompt] * 2,
        latents=traj.latents[:, 0],
        num_inference_steps=st.steps,
        guidance_scale=st.guidance,
        eta=0.0,
        output_type="latent",
    ).images
    assert_close(traj.latents[:, -1], ref_text, atol=1e-5, rtol=1e-5)


def test_flow_sde_noise0_equals_stock_sd3_pipeline(tiny_models):
    """Bit equality by construction: the transformer on [uncond, cond] in one batch, as the stock
    pipeline runs it, and the Euler step x + v dt as the same elementwise ops."""
    pipe = load_pipeline(tiny_models["sd3"])
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
        output_type="latent",
    ).images
    assert_close(traj.latents[:, -1], ref, atol=0, rtol=0)


def test_flow_sde_noise0_equals_stock_flux_pipeline(tiny_models):
    """Bit equality by construction: FluxPipeline's true CFG runs the conditional and unconditional passes
    as two calls of B, and so does prefkit's FLUX family (one call of 2B rounded differently on AMD EPYC:
    7,260 of 8,192 elements off by up to 1.8e-6)."""
    pipe = load_pipeline(tiny_models["flux"])
    fam = family_of(pipe)
    st = _settings(chain_dtype=None, record_logprob=False)
    traj = sample(fam, PROMPTS, [5, 6], st)
    c = traj.cond
    x_t = traj.latents[:, 0]
    ref = pipe(
        prompt_embeds=c.prompt_embeds,
        pooled_prompt_embeds=c.pooled,
        negative_prompt_embeds=c.negative_prompt_embeds,
        negative_pooled_prompt_embeds=c.negative_pooled,
        true_cfg_scale=st.guidance,
        latents=fam.pack(x_t),
        height=32,
        width=32,
        num_inference_steps=st.steps,
        output_type="latent",
    ).images
    assert_close(traj.latents[:, -1], fam.unpack(ref, *x_t.shape[-2:]), atol=0, rtol=0)


def test_flux_pack_unpack_round_trip():
    from prefkit.families.flux import FluxFamily

    x = torch.randn(2, 16, 8, 6)
    packed = FluxFamily.pack(x)
    assert packed.shape == (2, 12, 64)
    assert_close(FluxFamily.unpack(packed, 8, 6), x, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["ddim", "sd3", "flux"])
def test_stored_logprob_equals_recomputed_with_gradients(tiny_models, family, tmp_path, cli):
    """Generate through the CLI, read the shard back, recompute every step's lp WITH gradients enabled
    (as the trainer will) from the stored float16 chain: equal to the stored lp."""
    from prefkit.shards import iter_samples

    out = tmp_path / "ds"
    res = cli(
        [
            "generate",
            "--out",
            out,
            "--model",
            tiny_models[family],
            "--prompt",
            PROMPTS[0],
            "--prompt",
            PROMPTS[1],
        ]
        + ["--samples-per-prompt", "2", "--steps", "4", "--height", "32", "--width", "32", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    samples = list(iter_samples(out))
    assert len(samples) == 4
    pipe = load_pipeline(tiny_models[family])
    fam = family_of(pipe)
    rec = samples[0]["record"]
    noise = rec["eta"] if family == "ddim" else rec["noise_level"]
    st = _settings(steps=rec["steps"], guidance=rec["guidance_scale"], noise=noise, negative_prompt="")
    schedule = fam.schedule(st.steps, st.height, st.width)
    assert_close(schedule.timesteps.numpy(), samples[0]["timesteps"], check_dtype=True)
    denoiser = fam.denoiser
    denoiser.requires_grad_(True)
    for s in samples:
        chain = torch.from_numpy(s["latents"]).float()[None]  # [1, K+1, C, h, w]
        cond = encode(fam, [s["record"]["prompt"]], st)
        for k in range(st.steps):
            lp = transition_logprob(fam, chain[:, k], chain[:, k + 1], k, schedule, cond, st)
            assert lp.requires_grad
            # generated in a batch of 4, recomputed alone: batch-dependent float32 kernels may round the
            # denoiser's output differently; 1e-6 is a few float32 ulps of |lp| ~ 2 (a formula error is >1e-3)
            assert_close(lp.detach(), torch.from_numpy(s["logprobs"][k : k + 1]), atol=1e-6, rtol=0)
    # the gradient reaches the denoiser's weights
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in denoiser.parameters())


def test_logprob_of_another_models_trajectory_differs(tiny_models):
    """The check above could pass trivially if lp ignored the model: a model with other weights must
    give another lp for the same stored transition."""
    from prefkit.models.tiny import build_tiny_sd3

    pipe = load_pipeline(tiny_models["sd3"])
    fam = family_of(pipe)
    st = _settings(noise=0.7, steps=3)
    traj = sample(fam, PROMPTS[:1], [1], st)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        other = family_of(load_pipeline(build_tiny_sd3(d + "/m", seed=1)))
        with torch.no_grad():
            lp_other = transition_logprob(
                other,
                traj.latents[:, 0],
                traj.latents[:, 1],
                0,
                traj.schedule,
                encode(other, PROMPTS[:1], st),
                st,
            )
    assert (lp_other - traj.logprobs[:, 0]).abs().item() > 1e-3


def test_one_generator_per_image_and_same_noise(tiny_models):
    fam = family_of(load_pipeline(tiny_models["sd3"]))
    st = _settings(noise=0.7, steps=3)
    both = sample(fam, PROMPTS, [7, 8], st)
    alone = sample(fam, PROMPTS[1:], [8], st)
    # sample 1 does not depend on sample 0's presence beyond float rounding of batched kernels: at most a
    # flip of one float16 ulp of the stored chain (2^-9 ~ 1.95e-3 for |x| in [2, 4)); lp, a mean over all
    # latent elements, moves by a small fraction of that
    assert_close(alone.latents[0], both.latents[1], atol=2e-3, rtol=0)
    assert_close(alone.logprobs[0], both.logprobs[1], atol=1e-3, rtol=0)
    # shared initial noise: x_T equal, trajectories still diverge through the per-step noise
    shared = sample(fam, [PROMPTS[0]] * 2, [7, 8], st, init_seeds=[99, 99])
    assert torch.equal(shared.latents[0, 0], shared.latents[1, 0])
    assert not torch.equal(shared.latents[0, -1], shared.latents[1, -1])


def test_regenerate_reproduces_a_stored_sample_bit_for_bit(tiny_models, tmp_path, cli):
    import numpy as np

    from prefkit.generate import regenerate
    from prefkit.shards import iter_samples

    for batch_size in ("3", "1"):
        out = tmp_path / f"ds{batch_size}"
        res = cli(
            [
                "generate",
                "--out",
                out,
                "--model",
                tiny_models["sd3"],
                "--prompt",
                PROMPTS[0],
                "--prompt",
                PROMPTS[1],
            ]
            + ["--samples-per-prompt", "2", "--steps", "3", "--batch-size", batch_size, "--quiet"]
        )
        assert res.exit_code == 0, res.output
        stored = {s["__key__"]: s for s in iter_samples(out)}
        key = "g00000001_s00"  # in the second batch of 3 (items 3 and 4... of shard 0)
        latents, logprobs, image = regenerate(out, key, alone=batch_size == "1")
        assert np.array_equal(latents.numpy(), stored[key]["latents"])
        assert np.array_equal(logprobs.numpy(), stored[key]["logprobs"])
        assert np.array_equal(np.asarray(image), np.asarray(stored[key]["image"]))


@pytest.mark.parametrize(
    ("family", "tokenizer", "default"), [("sd3", "tokenizer_3", 256), ("flux", "tokenizer_2", 512)]
)
def test_t5_padding_follows_the_tokenizer_limit(tiny_models, family, tokenizer, default):
    """T5 prompts are padded to min(pipeline default, tokenizer.model_max_length): 32 tokens for the
    tiny models (their attention stays small), the pipeline's default for real checkpoints."""
    from prefkit.families import t5_length

    pipe = load_pipeline(tiny_models[family])
    limit = getattr(pipe, tokenizer).model_max_length
    assert t5_length(pipe, tokenizer, default) == min(default, limit) == 32
    pe = family_of(pipe).encode(["a cat"], None).prompt_embeds
    clip_tokens = 77 if family == "sd3" else 0  # SD3 concatenates CLIP (77) and T5 tokens; FLUX uses T5 only
    assert pe.shape[1] == clip_tokens + 32


def test_a_size_beyond_the_position_embedding_is_refused_in_one_line(tiny_models):
    """tiny-sd3's transformer embeds positions for at most 64 x 64 latents (128 px): a larger size is a
    one-line error naming the limit, not a traceback from inside diffusers."""
    from prefkit.errors import PrefkitError
    from prefkit.families import family_of, load_pipeline

    family = family_of(load_pipeline(tiny_models["sd3"]))
    assert family.max_size() == 128
    family.check_size(128, 128)
    with pytest.raises(PrefkitError, match=r"--height 768: this sd3 model takes at most 128 px"):
        family.check_size(768, 64)
