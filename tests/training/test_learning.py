"""A learning test: preference labels from a rule make a short training run move fresh samples that way.

Setup. The tiny SD3 at 16 x 16 px (8 x 8 x 16 latents, 16 image tokens), 4 denoising steps, no CFG,
flow-SDE noise level 0.7. Eight training prompts x 8 samples are generated and labelled twice by a
scorer written to tmp_path: once preferring the BRIGHTER image (mean pixel value), once the DARKER,
all C(8, 2) pairs per prompt (224 decided pairs). Two LoRAs (D3PO, lr 1e-2, 30 steps of 8 pairs, rank
4, training seed 0) are trained, one per label set. Each is then sampled on HELD-OUT prompts with NEW
seeds, next to the base model with the very same seeds and prompts (paired: the initial noise and
every step's noise are identical, only the denoiser differs).

Why the margin means something. The statistic is the paired difference d_i = brightness(LoRA, seed i)
- brightness(base, seed i) over n = 64 samples; its standard error is std(d) / sqrt(n). Any LoRA drifts
the images a little, so a one-sided shift could be generic drift: the test therefore requires both
directions, brighter-rule > 0 and darker-rule < 0, each at more than T_MIN standard errors, and their
gap to dwarf the run-to-run noise of the base model itself (the mean brightness of two disjoint seed
sets). Nothing is hard-coded: with unlearnable labels (or a training loop that ignored them) the two
LoRAs would shift the same way or not at all and the assertions fail.

Numbers seen while writing this (2 CPU cores, torch CPU), training seeds 0 / 1 / 2:
  base: mean brightness 129.99, std across samples 0.83; two seed sets' means differ by 0.05.
  brighter rule: +0.64 / +0.48 / +2.47 (t = 21 / 20 / 33, 98-100 % of the paired samples up)
  darker rule:   -1.01 / -0.77 / -1.26 (t = -26 / -25 / -31, 100 % down)
In bfloat16 (--mixed-precision bf16, CPU autocast; the reference live, ratios exactly 1 at step 0), seed 0:
  d3po  brighter +0.676 +- 0.032 (t 21.3), darker -0.734 +- 0.031 (t -23.5);
  dense brighter +0.050 +- 0.004 (t 13.4), darker -0.420 +- 0.012 (t -35.0)  (~30 s each, marked slow).
Control (not run here): labels from two pseudo-random rules (scores hashed from the pixels) gave
+0.00 +- 0.05 (t 0.0) and -0.03 +- 0.05 (t -0.6): the effect comes from the labels, not from the
training run itself. The whole test runs in ~20 s (model builds included).

Why 16 px: at the default 32 px (16 x 16 x 16 latents) short runs did not move fresh samples
measurably (brightness and contrast, D3PO and dense; a top-minus-bottom brightness rule with this
recipe gave paired t ~ -1): four times the latent dimensions dilute the per-pair signal.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from prefkit.training.config import TrainConfig
from prefkit.training.run import run_train

SCORER = "prefkit_test_learning_scorer"
SIZE, STEPS, NOISE, GUIDANCE = 16, 4, 0.7, 1.0
TRAIN_PROMPTS = [f"a photo of a {w}" for w in "cat dog horse monkey rabbit zebra spider bird".split()]
HELD_OUT = [f"a painting of a {w}" for w in "sheep deer cow goat lion tiger bear fox".split()]
N_EVAL = 64
T_MIN = 5.0  # paired t each direction must exceed (seen: 20-33)


def _brightness(images) -> np.ndarray:
    return np.array([np.asarray(im.convert("RGB"), dtype=np.float64).mean() for im in images])


@pytest.fixture
def scorer_module(tmp_path):
    (tmp_path / f"{SCORER}.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def _mean(im):
                return float(np.asarray(im.convert("RGB"), dtype=np.float64).mean())

            def brighter(images, prompts):
                return [_mean(im) for im in images]

            def darker(images, prompts):
                return [-_mean(im) for im in images]
            """
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        yield SCORER


def _invoke(args: list) -> None:
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective,mixed_precision",
    [
        ("d3po", "no"),
        pytest.param("d3po", "bf16", marks=pytest.mark.slow),
        pytest.param("dense", "bf16", marks=pytest.mark.slow),
    ],
    ids=["d3po-float32", "d3po-bf16", "dense-bf16"],
)
@pytest.mark.usefixtures("fresh_accelerator")
def test_preference_rule_is_learned(tiny_models, scorer_module, tmp_path, objective, mixed_precision):
    from prefkit.families import family_of, load_pipeline
    from prefkit.sampling import SamplerSettings, sample

    model = tiny_models["sd3"]
    data = tmp_path / "data"
    prompt_args = [a for p in TRAIN_PROMPTS for a in ("--prompt", p)]
    _invoke(
        ["generate", "--out", data, "--model", model, *prompt_args, "--samples-per-prompt", 8]
        + ["--steps", STEPS, "--height", SIZE, "--width", SIZE, "--guidance", GUIDANCE]
        + ["--noise-level", NOISE, "--batch-size", 16, "-q"]
    )
    for rule in ("brighter", "darker"):
        _invoke(["label", data, "--source", f"python:{scorer_module}:{rule}", "--name", rule, "-q"])
        run_train(
            TrainConfig(
                dataset=str(data),
                out=str(tmp_path / rule),
                labels=rule,
                objective=objective,
                lr=1e-2,
                max_steps=30,
                batch_size=8,
                seed=0,
                mixed_precision=mixed_precision,
                quiet=True,
            )
        )

    settings = SamplerSettings(
        steps=STEPS, guidance=GUIDANCE, noise=NOISE, height=SIZE, width=SIZE, record_logprob=False
    )
    prompts = [HELD_OUT[i % len(HELD_OUT)] for i in range(N_EVAL)]
    seeds = list(range(100_000, 100_000 + N_EVAL))  # none of these seeded a training sample

    def brightness(lora: Path | None, seed_list: list[int]) -> np.ndarray:
        pipe = load_pipeline(model)
        if lora is not None:
            pipe.load_lora_weights(str(lora))
        return _brightness(sample(family_of(pipe), prompts, seed_list, settings).images)

    base = brightness(None, seeds)
    base_other = brightness(None, list(range(200_000, 200_000 + N_EVAL)))
    seed_noise = abs(base_other.mean() - base.mean())

    effects = {}
    for rule in ("brighter", "darker"):
        d = brightness(tmp_path / rule / "lora", seeds) - base
        se = d.std(ddof=1) / np.sqrt(N_EVAL)
        effects[rule] = (d.mean(), se, d.mean() / se)
    summary = (
        f"base {base.mean():.3f} (sd {base.std():.3f}, other seeds {base_other.mean():.3f}); "
        + "; ".join(f"{r}: {m:+.3f} +- {se:.3f} (t {t:+.1f})" for r, (m, se, t) in effects.items())
    )
    print(f"{objective} {mixed_precision}: {summary}")
    up, down = effects["brighter"], effects["darker"]
    # each LoRA moves brightness its own rule's way, far outside the paired noise
    assert up[2] > T_MIN, summary
    assert down[2] < -T_MIN, summary
    # and the two rules' gap dwarfs both the run-to-run noise between seed sets of the base model and
    # the paired standard errors (seen: gap ~1.6, seed-set noise ~0.05, se ~0.03-0.04)
    gap = up[0] - down[0]
    assert gap > 5 * max(seed_noise, np.hypot(up[1], down[1])), summary
    assert gap > 0.25 * base.std(), summary
