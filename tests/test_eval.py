"""`prefkit eval`: intervals against hand-worked numbers, and the command on the tiny SD3 at 16 px.

The learned LoRA comes from the loop of tests/training/test_learning.py, made through the CLI (generate -> label
-> train) and smaller: 8 prompts x 8 samples, 4 steps, no CFG, noise level 0.7, labelled by a scorer
that prefers brighter images (tests/prefkit_test_scorers.py), D3PO lr 1e-2 for 20 steps of 8 pairs
(--reference stored: one forward pass fewer). It is then evaluated on 8 held-out prompts x 4 seeds with
the same scorer as the judge. Seen while writing this: 32 wins of 32, Wilson [0.893, 1.000]; tuned
minus base brightness +0.55 [0.48, 0.63] (of 255); latent RMS distance 0.156 (base x0 RMS 1.16).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from prefkit.math.stats import mean_interval, t_quantile_975, wilson_interval, win_rate
from prefkit.schemas import validate

NONE = {"value": None, "low": None, "high": None}  # a win rate without comparisons (or decisive pairs)

SCORER = "python:prefkit_test_scorers:brightness"
SIZE, STEPS, NOISE, GUIDANCE = 16, 4, 0.7, 1.0
TRAIN_PROMPTS = [f"a photo of a {w}" for w in "cat dog horse monkey rabbit zebra spider bird".split()]
HELD_OUT = [f"a painting of a {w}" for w in "sheep deer cow goat lion tiger bear fox".split()]


# -- intervals, by hand -------------------------------------------------------------------------------


def test_wilson_interval_hand_worked():
    # 60 wins of 100, z = 1.959964, z^2 = 3.841459:
    #   z^2/n = 0.0384146;  centre = (0.6 + 0.0192073) / 1.0384146 = 0.596301
    #   half  = 1.959964 / 1.0384146 * sqrt(0.6 * 0.4 / 100 + 3.841459 / 40000)
    #         = 1.887464 * sqrt(0.0024 + 0.0000960) = 1.887464 * 0.0499604 = 0.094298
    #   -> [0.502003, 0.690599]
    low, high = wilson_interval(60, 100)
    assert low == pytest.approx(0.502003, abs=2e-6) and high == pytest.approx(0.690599, abs=2e-6)
    # 6 of 10: z^2/n = 0.384146; centre = (0.6 + 0.192073) / 1.384146 = 0.572246
    #   half = 1.959964 / 1.384146 * sqrt(0.024 + 0.0096037) = 1.416010 * 0.183313 = 0.259573
    #   -> [0.312673, 0.831819]
    assert wilson_interval(6, 10) == pytest.approx((0.312673, 0.831819), abs=2e-6)
    # 10 of 10: p = 1, centre + half = (1 + z^2/20 + z * sqrt(z^2/400)) / (1 + z^2/10) = 1 exactly;
    #   low = (1 + 0.192073 - 0.192073) / 1.384146 = 0.722467
    assert wilson_interval(10, 10) == pytest.approx((0.722467, 1.0), abs=2e-6)
    # 5 wins, 2 ties, 3 losses: the value counts ties half, (5 + 1) / 10 = 0.6; the interval is the sign
    # test's, 5 of the 8 decisive pairs: z^2/n = 0.480182, centre = (0.625 + 0.240091) / 1.480182 = 0.584449,
    #   half = 1.959964 / 1.480182 * sqrt(0.029297 + 0.015006) = 1.324141 * 0.210482 = 0.278707
    #   -> q in [0.305742, 0.863156]; on the win rate's scale (8 of 10 decisive):
    #   0.5 + 0.8 (0.305742 - 0.5) = 0.344594, 0.5 + 0.8 (0.863156 - 0.5) = 0.790525
    wr = win_rate(5, 2, 3)
    assert wr["value"] == pytest.approx(0.6)
    assert (wr["low"], wr["high"]) == pytest.approx((0.344594, 0.790525), abs=2e-6)
    assert wr["decisive"] == pytest.approx({"value": 0.625, "low": 0.305742, "high": 0.863156}, abs=2e-6)
    # many ties do not hide a consistent winner: 13 wins, 113 ties, 2 losses (13 of 15 decisive,
    # Wilson [0.621180, 0.962639]) -> 0.5 + 15/128 (q - 0.5) = [0.514201, 0.554215], excluding 0.5,
    # where counting each tie as half a binomial trial, Wilson(69.5, 128), would not: [0.456676, 0.626758]
    wr = win_rate(13, 113, 2)
    assert (wr["low"], wr["high"]) == pytest.approx((0.514201, 0.554215), abs=2e-6)
    assert wilson_interval(69.5, 128) == pytest.approx((0.456676, 0.626758), abs=2e-6)
    # the interval excludes 0.5 exactly when the sign test's Wilson interval does, whatever the ties
    for w, t, lo in [(9, 0, 3), (9, 50, 3), (9, 500, 3), (10, 0, 2), (10, 500, 2), (30, 7, 15)]:
        wr = win_rate(w, t, lo)
        assert (wr["low"] > 0.5) == (wr["decisive"]["low"] > 0.5), (w, t, lo)
        assert wr["low"] <= wr["value"] <= wr["high"], (w, t, lo)
    # all ties (a LoRA that changes nothing): 0.5, and no decisive pair to put an interval on
    assert win_rate(0, 64, 0) == {"value": 0.5, "low": None, "high": None, "decisive": NONE}
    assert win_rate(0, 0, 0) == {**NONE, "decisive": NONE}


def test_mean_interval_and_t_quantile_hand_worked():
    # [1, 2, 3, 4]: mean 2.5, sd sqrt(5/3) = 1.290994, t_{0.975,3} = 3.1824,
    #   half = 3.1824 * 1.290994 / 2 = 2.054230 -> [0.445770, 4.554230]
    m = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert m["mean"] == 2.5 and m["std"] == pytest.approx(1.290994, abs=1e-6)
    assert (m["low"], m["high"]) == pytest.approx((0.445770, 4.554230), abs=1e-5)
    assert (m["min"], m["max"], m["n"]) == (1.0, 4.0, 4)
    one = mean_interval([3.0])
    assert one["mean"] == 3.0 and one["std"] is None and one["low"] is None
    # the Cornish-Fisher expansion beyond the table meets it at 30 and gives the tabled 40, 60, 120
    assert t_quantile_975(30) == 2.0423
    for df, table in ((31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799)):
        assert t_quantile_975(df) == pytest.approx(table, abs=1e-4)
    assert t_quantile_975(10**6) == pytest.approx(1.959966, abs=1e-6)


def test_pairwise_judge_verdicts_none_left_out():
    """A pair judge compares (base, tuned): "1" is a tuned win; None verdicts are counted, not scored."""
    from prefkit.evaluate import judge_batch, outcome, summarize

    class Judge:
        def compare(self, pairs):
            return [{"choice": c, "agree": c is not None} for c in ("1", "1", "0", "tie", None)][: len(pairs)]

    verdicts = judge_batch(Judge(), True, list("abcde"), list("ABCDE"), ["p"] * 5, batch_size=8)
    outcomes = [outcome(sb, st, c, 0.0) for sb, st, c, _ in verdicts]
    assert outcomes == ["win", "win", "loss", "tie", "none"]
    assert verdicts[4][3] == {"agree": False}
    rows = [
        {"outcome": o, "latent_rms": 0.1, "latent_rms_base": 1.0, "pixel_mad": 1.0, "kl_per_step": None}
        for o in outcomes
    ]
    s = summarize(rows, scored=False, kl=False)
    assert (s["wins"], s["ties"], s["losses"], s["no_verdict"]) == (2, 1, 1, 1)
    assert s["win_rate"]["value"] == pytest.approx(2.5 / 4) and s["scores"] is None
    # a scorer: the tie margin decides
    assert [outcome(1.0, t, None, 0.5) for t in (1.6, 1.5, 0.4)] == ["win", "tie", "loss"]


# -- the command on the tiny model ---------------------------------------------------------------------


def _ok(res):
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def bright_run(tiny_models, tmp_path_factory):
    """A training run (through the CLI) whose LoRA was taught to prefer brighter images."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    def cli(args):
        return _ok(CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False))

    root = tmp_path_factory.mktemp("eval")
    data, run = root / "data", root / "run"
    cli(
        ["generate", "--out", data, "--model", tiny_models["sd3"], "--samples-per-prompt", 8]
        + [a for p in TRAIN_PROMPTS for a in ("--prompt", p)]
        + ["--steps", STEPS, "--height", SIZE, "--width", SIZE, "--guidance", GUIDANCE]
        + ["--noise-level", NOISE, "--batch-size", 16, "-q"]
    )
    cli(["label", data, "--source", SCORER, "-q"])
    cli(
        ["train", data, "--out", run, "--objective", "d3po", "--lr", 1e-2, "--max-steps", 20]
        + ["--batch-size", 8, "--seed", 0, "--reference", "stored", "-q"]
    )
    return run


@pytest.mark.slow
def test_eval_of_a_learned_lora(bright_run, tiny_models, cli, tmp_path):
    """Settings come from the training run; the brighter-trained LoRA wins, its interval above 0.5."""
    from prefkit.shards import iter_samples

    res = _ok(
        cli(
            [
                "eval",
                "--lora",
                bright_run / "lora",
                "--source",
                SCORER,
                "--samples-per-prompt",
                4,
                "--batch-size",
                16,
            ]
            + [a for p in HELD_OUT for a in ("--prompt", p)]
        )
    )
    out = bright_run / "eval"  # the default --out for OUT/lora
    assert "win rate" in res.output and str(out / "report.json") in res.output
    report = json.loads((out / "report.json").read_text())
    validate(report, "eval")
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for row in rows:
        validate(row, "eval_sample")
    s = report["summary"]
    summary = f"{s['win_rate']} wins {s['wins']} ties {s['ties']} losses {s['losses']}; {s['scores']}"
    assert s["pairs"] == len(rows) == 32
    assert s["win_rate"]["value"] > 0.5 and s["win_rate"]["low"] > 0.5, summary
    assert s["scores"]["difference"]["low"] > 0, summary  # brighter on average, outside the noise
    assert s["drift"]["latent_rms"]["mean"] > 0 and s["drift"]["kl_per_step"]["mean"] > 0
    assert report["settings"]["height"] == SIZE and report["settings"]["steps"] == STEPS
    assert report["settings"]["guidance"] == GUIDANCE and report["settings"]["noise_level"] == NOISE
    assert report["settings_from"]["steps"] == "training run"
    assert report["settings_from"]["model"] == "training run"
    assert report["training_run"] == str(bright_run.resolve())
    assert report["judge"]["kind"] == "scorer" and report["judge"]["source"] == SCORER
    # grid.png: 8 prompts x 4 seeds as base | tuned pairs; 16 px images enlarged 8x to 128 px cells,
    # 4 px padding, a 14 px title band per row and a 13 px caption band per image
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (4 + 8 * (128 + 4), 4 + 8 * (14 + 13 + 128 + 4))
    # the tuned samples are exactly those prefkit generate --lora writes with the same settings and seed
    # (the first four prompts x 4 samples are one batch of 16 in both)
    gen = tmp_path / "gen"
    _ok(
        cli(
            ["generate", "--out", gen, "--model", tiny_models["sd3"], "--lora", bright_run / "lora"]
            + [a for p in HELD_OUT[:4] for a in ("--prompt", p)]
            + ["--samples-per-prompt", 4, "--seed", 1000, "--steps", STEPS, "--height", SIZE, "--width", SIZE]
            + ["--guidance", GUIDANCE, "--noise-level", NOISE, "--batch-size", 16, "-q"]
        )
    )
    from prefkit_test_scorers import brightness

    by_key = {(r["group"], r["index"]): r for r in rows}
    for s_ in iter_samples(gen):
        rec = s_["record"]
        row = by_key[(rec["group_id"], rec["sample_index"])]
        assert rec["seed"] == row["seed"]
        assert brightness([s_["image"]], [rec["prompt"]])[0] == row["score_tuned"]
    # never overwritten silently (the run folder OUT stands for OUT/lora, whose default --out is OUT/eval)
    res = cli(["eval", "--lora", bright_run, "--source", SCORER, "--prompt", "x"])
    assert res.exit_code == 2 and "not empty" in res.output and str(out) in res.output


def test_base_samples_equal_a_lora_free_pipeline(bright_run, tiny_models):
    """Adapters off == the pipeline loaded without the LoRA, bit for bit (same batch composition)."""
    from prefkit.config import GenerateConfig
    from prefkit.evaluate import set_adapters
    from prefkit.generate import sample_batch, setup
    from prefkit.shards import png_bytes

    common = dict(model=tiny_models["sd3"], prompt=HELD_OUT[:2], samples_per_prompt=3, seed=1000, steps=STEPS)
    common.update(height=SIZE, width=SIZE, guidance=GUIDANCE, noise_level=NOISE, batch_size=6)
    batch = [(g, i) for g in range(2) for i in range(3)]
    cpu = torch.device("cpu")
    with_lora = setup(GenerateConfig(lora=str(bright_run / "lora"), **common), cpu)
    plain = setup(GenerateConfig(**common), cpu)
    set_adapters(with_lora.pipe, with_lora.family, False)
    _, base = sample_batch(with_lora.family, with_lora.settings, with_lora.cfg, with_lora.prompts, batch)
    _, ref = sample_batch(plain.family, plain.settings, plain.cfg, plain.prompts, batch)
    assert torch.equal(base.latents, ref.latents) and torch.equal(base.logprobs, ref.logprobs)
    assert [png_bytes(im) for im in base.images] == [png_bytes(im) for im in ref.images]
    set_adapters(with_lora.pipe, with_lora.family, True)
    _, tuned = sample_batch(with_lora.family, with_lora.settings, with_lora.cfg, with_lora.prompts, batch)
    assert not torch.equal(tuned.latents[:, -1], ref.latents[:, -1])
    assert torch.equal(tuned.latents[:, 0], ref.latents[:, 0])  # same seeds: the same initial noise


@pytest.fixture(scope="module")
def zero_lora(tiny_models, tmp_path_factory):
    """An untrained LoRA (B = 0, as peft initialises it) saved outside any training run."""
    from prefkit.families import family_of, load_pipeline
    from prefkit.training.config import TrainConfig
    from prefkit.training.lora import add_lora, save_lora

    pipe = load_pipeline(tiny_models["sd3"])
    fam = family_of(pipe)
    add_lora(fam.denoiser, TrainConfig(lora_rank=4, lora_alpha=4.0), fam)
    folder = tmp_path_factory.mktemp("zero") / "untrained"
    save_lora(pipe, fam.denoiser, folder)
    return folder


def test_untrained_lora_no_drift_all_ties(zero_lora, tiny_models, cli, tmp_path):
    """B = 0: tuned == base, so every comparison is a tie, the win rate 0.5 and every drift exactly 0.
    Outside a training run the model comes from --model and the rest from --config and the defaults."""
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"source: {SCORER}\nsamples: 3\nsteps: 2\nheight: {SIZE}\nwidth: {SIZE}\nguidance: 1.0\n"
    )
    out = tmp_path / "out"
    _ok(
        cli(
            ["eval", "--lora", zero_lora, "--model", tiny_models["sd3"], "--config", config]
            + ["--prompt", "a red circle", "--prompt", "a blue square", "--out", out, "-q"]
        )
    )
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    assert (s["pairs"], s["ties"], s["wins"], s["losses"]) == (6, 6, 0, 0)
    assert s["win_rate"] == {"value": 0.5, "low": None, "high": None, "decisive": NONE}
    for key in ("latent_rms", "pixel_mad", "kl_per_step"):
        assert s["drift"][key]["max"] == 0.0 and s["drift"][key]["min"] == 0.0, key
    assert s["scores"]["difference"]["mean"] == 0.0
    assert report["training_run"] is None and "no training run found" in report["notes"][0]
    assert report["settings_from"]["model"] == "flag" and report["settings_from"]["steps"] == "flag"
    assert report["settings_from"]["noise_level"] == "default" and report["settings"]["noise_level"] == 0.7
    assert report["settings"]["seed"] == 1000
    with Image.open(out / "grid.png") as grid:  # 2 prompts x 3 seeds
        assert grid.size == (4 + 6 * (128 + 4), 4 + 2 * (14 + 13 + 128 + 4))
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "report.json", "samples.jsonl"]
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_bad_input_exits_2_naming_the_thing(zero_lora, tiny_models, cli, tmp_path):
    base = ["eval", "--source", SCORER, "--prompt", "a red circle", "--samples-per-prompt", 1, "--steps", 1]
    base += ["--height", SIZE, "--width", SIZE, "-q"]
    out = tmp_path / "out"

    def fails(args, *needles):
        res = cli([*base, *args])
        assert res.exit_code == 2, res.output
        for needle in needles:
            assert needle in res.output, res.output
        assert not out.exists()  # nothing written on bad input

    fails(["--lora", tmp_path / "nowhere", "--out", out], "--lora", "nowhere", "no such folder")
    (tmp_path / "empty").mkdir()
    fails(["--lora", tmp_path / "empty", "--out", out], "pytorch_lora_weights.safetensors", "empty")
    fails(["--lora", zero_lora, "--out", out], "--model is required", "no training run found")
    model = ["--model", tiny_models["sd3"], "--out", out]
    fails(["--lora", zero_lora, *model, "--samples-per-prompt", 0], "--samples-per-prompt 0")
    fails(["--lora", zero_lora, "--model", tiny_models["ddim"], "--out", out], "does not fit", "unet")
    res = cli([*base, "--lora", zero_lora, *model[:2], "--out", out, "--source", "nosuchjudge"])
    assert res.exit_code == 2 and "nosuchjudge" in res.output and "unknown" in res.output
    res = cli([*base, "--lora", zero_lora, *model[:2], "--out", out, "--source", "human"])
    assert res.exit_code == 2 and "human" in res.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    res = cli([*base, "--lora", zero_lora, *model[:2], "--out", tmp_path / "full"])
    assert res.exit_code == 2 and "not empty" in res.output and str(tmp_path / "full") in res.output
    # --overwrite writes beside what is there, atomically per file
    _ok(cli([*base, "--lora", zero_lora, *model[:2], "--out", tmp_path / "full", "--overwrite", "--no-kl"]))
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    report = json.loads((tmp_path / "full" / "report.json").read_text())
    assert report["summary"]["drift"]["kl_per_step"] is None and math.isfinite(report["seconds"]["total"])


def test_default_out(tmp_path):
    from prefkit.evaluate import default_out

    assert default_out(tmp_path / "run" / "lora") == tmp_path / "run" / "eval"
    assert default_out(tmp_path / "run" / "checkpoint-20") == tmp_path / "run" / "eval-checkpoint-20"
    assert default_out(tmp_path / "mine") == tmp_path / "eval-mine"


@pytest.mark.parametrize("family", ["ddim", "flux"])
def test_untrained_lora_other_families(tiny_models, family, tmp_path):
    """The other families: adapters switch off and on through the pipeline (DDIM with eta, FLUX)."""
    from prefkit.config import EvalConfig
    from prefkit.evaluate import run_eval
    from prefkit.families import family_of, load_pipeline
    from prefkit.training.config import TrainConfig
    from prefkit.training.lora import add_lora, save_lora

    pipe = load_pipeline(tiny_models[family])
    fam = family_of(pipe)
    add_lora(fam.denoiser, TrainConfig(lora_rank=2, lora_alpha=2.0), fam)
    save_lora(pipe, fam.denoiser, tmp_path / "lora")
    report = run_eval(
        EvalConfig(
            lora=str(tmp_path / "lora"),
            model=tiny_models[family],
            prompt=["a red circle"],
            samples_per_prompt=2,
            steps=2,
            source=SCORER,
            quiet=True,
        )
    )
    s = report["summary"]
    assert (
        s["ties"] == 2 and s["drift"]["latent_rms"]["max"] == 0.0 and s["drift"]["kl_per_step"]["max"] == 0.0
    )
    assert report["model"]["family"] == family and (tmp_path / "eval" / "grid.png").is_file()
    assert report["settings"]["eta" if family == "ddim" else "noise_level"] == (
        1.0 if family == "ddim" else 0.7
    )


def test_settings_precedence(tmp_path):
    """Flags > the training run (its config.yaml over its dataset's manifest) > defaults."""
    from prefkit.config import EvalConfig
    from prefkit.evaluate import Origin, resolve_settings

    manifest = {
        "settings": {
            "model": "tiny-sd3",
            "revision": None,
            "steps": 4,
            "guidance": 5.0,
            "negative_prompt": "",
            "eta": None,
            "noise_level": 0.7,
            "height": 16,
            "width": 16,
        },
        "model": {"path": None},
    }
    origin = Origin(
        lora=tmp_path, run=tmp_path, train={"objective": "d3po", "guidance": 1.0}, manifest=manifest
    )
    values, origins, load_from = resolve_settings(EvalConfig(steps=2), origin)
    assert (values["steps"], origins["steps"]) == (2, "flag")
    assert (values["guidance"], origins["guidance"]) == (1.0, "training run")  # trained under it
    assert (values["noise_level"], values["height"], load_from) == (0.7, 16, "tiny-sd3")
    assert origins["revision"] == "default"
    # an --eta flag replaces the run's noise level (the model then refuses it, naming the flag)
    values, origins, _ = resolve_settings(EvalConfig(eta=0.5), origin)
    assert (values["eta"], values["noise_level"], origins["noise_level"]) == (0.5, None, "default")
    # diffusion-dpo trains at --resolution
    origin.train = {"objective": "diffusion-dpo", "resolution": 32, "model": "tiny-sd3"}
    values, origins, _ = resolve_settings(EvalConfig(), origin)
    assert (values["height"], values["width"], origins["height"]) == (32, 32, "training run")


def test_tie_margin_defaults_to_the_training_labels(tmp_path):
    """Without --tie-margin, eval takes the margin the training pairs were labelled with, for that judge
    only (a margin is in its score's units); a flag wins; several margins or another judge give 0."""
    from prefkit.config import EvalConfig
    from prefkit.evaluate import Origin, fill_defaults

    labels = tmp_path / "labels"
    labels.mkdir()

    def meta(name, source, margin):
        # a complete meta record: eval checks each against schemas/labelset.schema.json
        counts = dict.fromkeys(("pairs", "ties", "decided", "unlabelled", "votes"), 0) | {
            "scored_samples": None
        }
        agreement = {"items_with_2plus_votes": 0, "annotators": 0, "percent_agreement": None,
                     "krippendorff_alpha": None}  # fmt: skip
        record = {"name": name, "prefkit_version": "0", "created_at": "2026-01-01T00:00:00Z", "source": source,
                  "tie_margin": margin, "counts": counts, "agreement": agreement}  # fmt: skip
        (labels / f"{name}.meta.json").write_text(json.dumps(record))

    meta("a", "shapes", 0.01)
    origin = Origin(lora=tmp_path / "lora", run=tmp_path, train={"labels": "a"}, folder=tmp_path)
    manifest_free = {"prompt": ["x"]}  # a prompt given: no prompts default
    cfg, notes = fill_defaults(EvalConfig(lora="lora", **manifest_free), origin)
    assert (cfg.source, cfg.tie_margin) == ("shapes", 0.01)
    assert any("--tie-margin 0.01" in n for n in notes) and any("--source shapes" in n for n in notes)
    cfg, _ = fill_defaults(EvalConfig(lora="lora", tie_margin=0.3, **manifest_free), origin)
    assert cfg.tie_margin == 0.3  # the flag wins
    cfg, notes = fill_defaults(EvalConfig(lora="lora", source="jpeg", **manifest_free), origin)
    assert cfg.tie_margin == 0.0 and not any("tie-margin" in n for n in notes)  # another judge's units
    meta("b", "shapes", 0.05)
    origin.train = {"labels": "a,b"}
    cfg, _ = fill_defaults(EvalConfig(lora="lora", **manifest_free), origin)
    assert (cfg.source, cfg.tie_margin) == ("shapes", 0.0)  # two margins: none is the training margin
    assert fill_defaults(EvalConfig(lora="lora", **manifest_free), Origin(lora=tmp_path))[0].tie_margin == 0.0


def test_a_run_whose_dataset_is_not_reachable_reports_that_first(tmp_path, monkeypatch):
    """A training run recorded its dataset as a relative path (runs before absolute paths were recorded);
    eval started elsewhere names the missing dataset, not the defaults it would have given."""
    from prefkit.config import EvalConfig
    from prefkit.errors import PrefkitError
    from prefkit.evaluate import LORA_WEIGHTS, find_origin, run_eval

    run = tmp_path / "runs" / "x"
    (run / "lora").mkdir(parents=True)
    (run / "lora" / LORA_WEIGHTS).write_bytes(b"")
    (run / "config.yaml").write_text("dataset: ds\nobjective: d3po\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    origin = find_origin(str(run))
    assert origin.manifest is None and "'ds'" in origin.missing_dataset
    assert (
        str(elsewhere / "ds") in origin.missing_dataset
        and str(tmp_path / "runs" / "ds") in origin.missing_dataset
    )
    with pytest.raises(PrefkitError, match=r"dataset 'ds' .*no manifest\.json.*give --source and --prompt"):
        run_eval(EvalConfig(lora=str(run)))
    # a dataset that moved together with the run folder (runs/ds beside runs/x) is found
    moved = tmp_path / "runs" / "ds"
    moved.mkdir()
    (moved / "manifest.json").write_text(json.dumps({"settings": {}, "prompts": []}))
    monkeypatch.setattr("prefkit.shards.read_manifest", lambda folder: {"settings": {}, "prompts": []})
    assert find_origin(str(run)).folder == moved


# -- the gold judge and the grid's marks ----------------------------------------------------------------


def _found(diffs=None, outcomes=None):
    """judged() of a scorer whose tuned - base differences are ``diffs`` (base 0), or of a pair judge."""
    from prefkit.evaluate import judged

    if diffs is not None:
        return judged(["win" if d > 0 else "loss" for d in diffs], [0.0] * len(diffs), list(diffs))
    return judged(outcomes, None, None)


def test_gain_and_hacking_verdict_hand_worked():
    from prefkit.evaluate import gain, gold_status

    # [1, 2, 3, 4]: mean 2.5, 95 % t interval [0.445770, 4.554230] (as above): up
    up = gain(_found([1.0, 2.0, 3.0, 4.0]))
    assert (up["kind"], up["n"], up["direction"]) == ("score_difference", 4, "up")
    assert (up["mean"], up["low"], up["high"]) == pytest.approx((2.5, 0.445770, 4.554230), abs=1e-5)
    down = gain(_found([-1.0, -2.0, -3.0, -4.0]))
    assert down["direction"] == "down" and down["high"] == pytest.approx(-0.445770, abs=1e-5)
    flat = gain(_found([-1.0, 1.0, -2.0, 2.0]))  # mean 0: the interval holds 0
    assert flat["direction"] == "none" and flat["low"] < 0 < flat["high"]
    one = gain(_found([5.0]))  # no interval from one sample: never a direction
    assert one["direction"] == "none" and one["low"] is None
    # a pair judge: win rate - 1/2 with the sign test's interval; 10 wins of 10: Wilson [0.722467, 1]
    pair = gain(_found(outcomes=["win"] * 10))
    assert pair["kind"] == "win_rate_minus_half" and pair["n"] == 10 and pair["direction"] == "up"
    assert (pair["mean"], pair["low"], pair["high"]) == pytest.approx((0.5, 0.222467, 0.5), abs=2e-6)
    lost = gain(_found(outcomes=["loss"] * 10 + ["none"]))  # no verdict: left out
    assert lost["n"] == 10 and lost["direction"] == "down"
    assert gold_status(up, down) == "hacking"
    assert gold_status(up, flat) == "unconfirmed"
    assert gold_status(up, pair) == "confirmed"
    assert gold_status(flat, down) == gold_status(down, down) == "no_proxy_gain"


def test_gold_summary_and_sample_marks():
    from prefkit.evaluate import gold_summary, sample_marks
    from prefkit.image_stats import STATS, compare

    rows = [
        {"outcome": "win", "score_base": 0.0, "score_tuned": d, "gold_base": 1.0, "gold_tuned": 1.0 - d,
         "gold_outcome": "loss"}
        for d in (1.0, 2.0, 3.0, 4.0)
    ]  # fmt: skip
    proxy = _found([1.0, 2.0, 3.0, 4.0])
    info = {"source": "shapes", "kind": "scorer", "tie_margin": 0.0, "info": {"name": "shapes"}}
    g = gold_summary(rows, proxy, info)
    assert g["hacking"] and g["status"] == "hacking" and g["losses"] == 4 and g["source"] == "shapes"
    assert g["gold_gain"]["mean"] == pytest.approx(-2.5) and g["proxy_gain"]["mean"] == pytest.approx(2.5)
    assert g["scores"]["base"]["mean"] == 1.0 and "hacking" in g["definition"]
    # marks: base values 0, 0.1, 0.2, 0.3 (spread sd 0.129); tuned + 1 on jpeg_bits -> flagged; a sample
    # moved by 1 > 0.129 is marked, one moved by only 0.05 (within the spread) is not
    base = [{k: 0.1 * i for k in STATS} for i in range(4)]
    tuned = [{**b, "jpeg_bits": b["jpeg_bits"] + (0.05 if i == 3 else 1.0)} for i, b in enumerate(base)]
    stats = compare(base, tuned)
    assert stats["flagged"] == ["jpeg_bits"]
    assert sample_marks(base[0], tuned[0], stats, "win", "loss", hacking=True) == ["jpeg_bits", "gold"]
    assert sample_marks(base[0], tuned[0], stats, "win", "loss", hacking=False) == ["jpeg_bits"]
    assert sample_marks(base[3], tuned[3], stats, "win", "tie", hacking=True) == []
    assert sample_marks(base[3], tuned[3], stats, "tie", "loss", hacking=True) == []  # proxy did not rise
    # a move against the mean's direction is not the flagged move
    against = {**base[0], "jpeg_bits": base[0]["jpeg_bits"] - 1.0}
    assert sample_marks(base[0], against, stats, "win", None, hacking=False) == []


def test_eval_grid_marks_flagged_samples_with_a_red_border():
    """grid.png: a marked tuned image has a 2 px pure red border in the padding around it (the image
    itself untouched), its caption names the marks, and a legend footer says what they mean."""
    from prefkit.evaluate import grid_image
    from prefkit.grid import MARK_COLOUR

    grey, blue = Image.new("RGB", (16, 16), (128, 128, 128)), Image.new("RGB", (16, 16), (0, 0, 255))
    kept = {(0, 0): (grey, blue), (0, 1): (grey, blue)}
    rows = {
        (0, i): {"group": 0, "index": i, "score_base": 1.0, "score_tuned": 2.0, "outcome": "win", "marks": m}
        for i, m in ((0, ["jpeg_bits", "gold"]), (1, []))
    }
    grid = grid_image(kept, ["a blue square"], rows, scored=True)
    # 16 px enlarged 8x to 128 px cells, 4 px apart; a title band (14) and a caption band (13) above them,
    # and one legend footer (16) below: 4 cells x 132 + 4 wide
    assert grid.size == (4 + 4 * (128 + 4), 4 + 14 + 13 + 128 + 4 + 16)
    top = 4 + 14 + 13
    for cell, marked in ((1, True), (3, False)):  # the tuned images of sample 0 (marked) and 1 (not)
        x = 4 + cell * (128 + 4)
        border = [(x - 1, top + 64), (x - 2, top + 64), (x + 128, top + 64), (x + 129, top + 64),
                  (x + 64, top - 1), (x + 64, top + 128), (x + 64, top + 129), (x - 2, top - 2)]  # fmt: skip
        for xy in border:
            assert grid.getpixel(xy) == (MARK_COLOUR if marked else (255, 255, 255)), (cell, xy)
        for xy in ((x, top), (x + 127, top + 127), (x + 64, top + 64)):  # the image is not covered
            assert grid.getpixel(xy) == (0, 0, 255), (cell, xy)
    for cell in (0, 2):  # base images are never marked
        assert grid.getpixel((4 + cell * 132 - 1, top + 64)) == (255, 255, 255)

    # the marked caption and the legend are drawn in red (anti-aliased text: red-dominated pixels); the
    # unmarked win's caption stays green
    def has(box, test):
        return any(test(c) for _, c in grid.crop(box).getcolors(1 << 16))

    red = lambda c: c[0] > 150 and c[1] < 90 and c[2] < 90  # noqa: E731
    green = lambda c: c[1] > 100 and c[0] < 60 and c[2] < 60  # noqa: E731
    assert has((4 + 132, 4 + 14, 4 + 2 * 132, top - 2), red)
    assert not has((4 + 3 * 132, 4 + 14, 4 + 4 * 132, top - 2), red)
    assert has((4 + 3 * 132, 4 + 14, 4 + 4 * 132, top - 2), green)
    assert has((0, top + 128 + 4, grid.width, grid.height), red)
    # nothing marked: no legend, no border
    rows[(0, 0)]["marks"] = []
    plain = grid_image(kept, ["a blue square"], rows, scored=True)
    assert plain.height == grid.height - 16 and MARK_COLOUR not in {c for _, c in plain.getcolors(1 << 16)}


def test_gold_judge_on_an_untrained_lora(zero_lora, tiny_models, cli, tmp_path):
    """--gold runs a second judge on the same images: with an untrained LoRA neither judge moves, so there
    is no proxy gain and no hacking; report and samples keep to their schemas. Bad --gold: exit 2."""
    base = ["eval", "--lora", zero_lora, "--model", tiny_models["sd3"], "--source", SCORER]
    base += ["--prompt", "a red circle", "--samples-per-prompt", 3, "--steps", 2, "--height", SIZE]
    base += ["--width", SIZE, "--guidance", 1.0, "--no-kl", "-q"]
    out = tmp_path / "out"
    _ok(cli([*base, "--out", out, "--gold", "jpeg", "--gold-method", "incompressibility"]))
    report = json.loads((out / "report.json").read_text())
    validate(report, "eval")
    g = report["summary"]["gold"]
    assert (g["source"], g["kind"], g["ties"], g["status"], g["hacking"]) == (
        "jpeg",
        "scorer",
        3,
        "no_proxy_gain",
        False,
    )
    assert g["info"]["method"] == "incompressibility" and g["scores"]["base"]["mean"] > 0  # a size in kB
    assert g["proxy_gain"]["mean"] == 0.0 and g["gold_gain"]["mean"] == 0.0
    assert report["config"]["gold"] == "jpeg" and report["summary"]["marked"] == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for row in rows:
        validate(row, "eval_sample")
        assert (
            row["gold_base"] == row["gold_tuned"] > 0 and row["gold_outcome"] == "tie" and row["marks"] == []
        )
    # without --gold: summary.gold is null, the rows' gold fields too
    _ok(cli([*base, "--out", tmp_path / "plain"]))
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert plain["summary"]["gold"] is None
    row = json.loads((tmp_path / "plain" / "samples.jsonl").read_text().splitlines()[0])
    assert (row["gold_base"], row["gold_outcome"]) == (None, None)
    for args, needle in (
        (["--gold", SCORER], "same judge as --source"),
        (["--gold", "human"], "--gold human"),
        (["--gold", "nosuchjudge"], "nosuchjudge"),
        (["--gold", "jpeg", "--gold-tie-margin", -1], "--gold-tie-margin -1"),
        (
            ["--gold", "jpeg", "--gold-method", "nosuchmethod"],
            "the gold judge (--gold and its --gold-* options)",
        ),
        (["--gold", "shapes", "--prompt", "a photo of a cat"], "the gold judge (--gold shapes)"),
    ):
        res = cli([*base, "--out", tmp_path / "bad", *args])
        assert res.exit_code == 2 and needle in res.output, res.output
        assert not (tmp_path / "bad").exists()
