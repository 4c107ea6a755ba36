"""The coloured-shapes world: captions, drawing, reading pictures back, and the --source shapes judge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefkit import shapes
from prefkit.judges.shapes import ShapesScorer


def test_caption_grammar_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(200):
        position = str(rng.choice(shapes.POSITIONS)) if rng.random() < 0.5 else None
        scene = shapes.random_scene(rng, position=position)
        cap = shapes.caption(scene, say_size=bool(rng.random() < 0.5), position=position)
        assert shapes.parse_caption(cap.text()) == cap
    assert shapes.parse_caption("A Small RED circle on the left on a blue background.") == shapes.Caption(
        "red", "circle", "blue", "small", "left"
    )
    for text in ("a photo of a cat", "a red hexagon on a blue background", "a red circle", ""):
        assert shapes.parse_caption(text) is None


def test_held_out_combinations_are_never_drawn_for_training():
    rng = np.random.default_rng(1)
    seen = {(s.colour, s.shape) for s in (shapes.random_scene(rng) for _ in range(2000))}
    assert not seen & shapes.HELD_OUT
    assert len(seen) == len(shapes.COLOURS) * len(shapes.SHAPES) - len(shapes.HELD_OUT)
    held = {(s.colour, s.shape) for s in (shapes.random_scene(rng, held_out=True) for _ in range(200))}
    assert held == set(shapes.HELD_OUT)


def test_canonical_places_and_jitter():
    """Without a position word a shape sits in the middle; with one, on the grid point nearest 1/5 of the
    side that keeps it inside (hand-worked: a medium shape, 16 px, needs 8 + 1 px: 0.28125 -> 0.3125);
    jitter k keeps centres within k grid steps of that place, and the judge reads the position word."""
    assert shapes.canonical_centre(0.5, None) == (0.5, 0.5)
    assert shapes.canonical_centre(0.3125, "left") == (0.25, 0.5)
    assert shapes.canonical_centre(0.5, "top") == (0.5, 0.3125)
    assert shapes.canonical_centre(0.6875, "right") == (0.625, 0.5)
    rng = np.random.default_rng(3)
    for jitter in (0, 1):
        for i in range(200):
            position = (None, *shapes.POSITIONS)[i % 5]
            scene = shapes.random_scene(rng, position=position, jitter=jitter)
            hx, hy = shapes.canonical_centre(scene.size, position)
            assert abs(scene.cx - hx) <= jitter / 16 + 1e-9 and abs(scene.cy - hy) <= jitter / 16 + 1e-9
            request = shapes.caption(scene, say_size=True, position=position)
            assert all(shapes.check(shapes.analyse(shapes.draw(scene)), request).values())
    centres = {(s.cx, s.cy) for s in (shapes.random_scene(rng, size="small", jitter=1) for _ in range(200))}
    assert len(centres) == 9


def test_reads_back_every_attribute_of_drawn_pictures():
    """Ground truth: on 400 drawn pictures (small shapes of 8 px included) every attribute is right."""
    rng = np.random.default_rng(2)
    wrong = []
    for i in range(400):
        position = shapes.POSITIONS[i % 4] if i % 3 == 0 else None
        scene = shapes.random_scene(rng, held_out=i % 2 == 0, position=position)
        request = shapes.caption(scene, say_size=True, position=position)
        verdict = shapes.check(shapes.analyse(shapes.draw(scene)), request)
        if not all(verdict.values()):
            wrong.append((scene, verdict))
    assert not wrong


def test_score_hand_worked():
    scene = shapes.Scene("red", "square", "blue", size=0.5, cx=0.5, cy=0.5)  # pixel-aligned: 16 px square
    picture = shapes.draw(scene)
    analysis = shapes.analyse(picture)
    assert analysis.shape_iou["square"] == pytest.approx(1.0)
    assert analysis.size == pytest.approx(0.5) and (analysis.cx, analysis.cy) == pytest.approx((0.5, 0.5))
    assert shapes.score(analysis, shapes.parse_caption("a red square on a blue background")) == pytest.approx(
        1.0
    )
    # asked for green: the colour term is 0.5 * 0 + 0.5 * (1 - |red - green| / 255), where
    # |(220, 40, 40) - (40, 170, 60)| = sqrt(180^2 + 130^2 + 20^2) = sqrt(49700) = 222.935
    colour_term = 0.5 * (1 - math.sqrt(49700) / 255)
    expected = (1.0 + colour_term + 1.0) / 3  # background, colour, shape
    assert expected == pytest.approx(0.687624, abs=1e-6)  # (2 + 0.0628726) / 3
    got = shapes.score(analysis, shapes.parse_caption("a green square on a blue background"))
    assert got == pytest.approx(expected)
    # asked for "small": a 0.5 box misses the small band (0.25-0.34) by 0.16 -> 0.5 * 0 + 0.5 * (1 - 0.16 / 0.3)
    size_term = 0.5 * (1 - (0.5 - 0.34) / 0.3)
    got = shapes.score(analysis, shapes.parse_caption("a small red square on a blue background"))
    assert got == pytest.approx((3.0 + size_term) / 4)


def test_blank_picture_scores_background_only():
    blank = np.zeros((32, 32, 3), np.uint8) + np.array(shapes.COLOURS["blue"], np.uint8)
    analysis = shapes.analyse(blank)
    assert analysis.colour is None and analysis.shape is None
    request = shapes.parse_caption("a red circle on a blue background")
    assert shapes.check(analysis, request) == {"colour": False, "shape": False, "background": True}
    assert shapes.score(analysis, request) == pytest.approx(1 / 3)


def test_scorer_ranks_the_right_picture_first_and_rejects_other_prompts():
    from prefkit.errors import PrefkitError

    judge = ShapesScorer()
    prompt = "a large yellow triangle on a black background"
    right = shapes.draw(shapes.Scene("yellow", "triangle", "black", 0.65, 0.5, 0.5))
    wrong_shape = shapes.draw(shapes.Scene("yellow", "circle", "black", 0.65, 0.5, 0.5))
    wrong_size = shapes.draw(shapes.Scene("yellow", "triangle", "black", 0.3, 0.5, 0.5))
    a, b, c = judge.score([right, wrong_shape, wrong_size], [prompt] * 3)
    assert a > b and a > c
    assert judge.check([right], [prompt]) == [
        {"colour": True, "shape": True, "background": True, "size": True}
    ]
    with pytest.raises(PrefkitError, match="a photo of a cat"):
        judge.score([right], ["a photo of a cat"])


def test_builtin_prompt_lists_follow_the_split():
    """`--prompts shapes` (the README's training prompts) uses training combinations only;
    `--prompts shapes-heldout` (evaluation) only combinations the model never saw."""
    from prefkit.prompts import resolve_prompts

    train = [shapes.parse_caption(p) for p in resolve_prompts(None, "shapes")]
    held = [shapes.parse_caption(p) for p in resolve_prompts(None, "shapes-heldout")]
    assert None not in train and None not in held
    assert not {(c.colour, c.shape) for c in train} & shapes.HELD_OUT
    assert {(c.colour, c.shape) for c in held} == set(shapes.HELD_OUT)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd3", "sd15"])
def test_build_script_makes_a_loadable_model_and_a_report(tmp_path, family):
    """The tiny-shapes build script end to end on a minute budget (a few steps of each phase): a plain
    diffusers folder that DiffusionPipeline.from_pretrained loads, with the judge's report beside it."""
    import json

    from diffusers import DiffusionPipeline

    from prefkit.models.shapes_model import BuildSettings, build

    settings = BuildSettings(
        vae_steps=2, steps=2, scenes=64, batch=8, vae_batch=4, eval_samples=4, family=family
    )
    report = build(tmp_path / "model", settings, log=lambda m: None)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "model")
    expected = {"sd3": "StableDiffusion3Pipeline", "sd15": "StableDiffusionPipeline"}[family]
    assert type(pipe).__name__ == expected
    assert pipe.vae.config.scaling_factor == pytest.approx(report["vae_scaling_factor"])
    saved = json.loads((tmp_path / "model" / "build_report.json").read_text())
    assert saved["settings"]["steps"] == 2 and 0.0 <= saved["held_out"]["colour_and_shape"] <= 1.0
    assert not [p for p in tmp_path.iterdir() if p.name != "model"]  # no temporary folder left


@pytest.mark.slow
def test_committed_model_is_the_script_default_and_draws_the_asked_colours():
    """data/models/tiny-shapes is what `python -m prefkit.models.shapes_model` builds with its defaults
    (its build_report.json says so), and re-measured with fresh seeds on held-out colour-shape combinations
    it draws the requested colour and shape in at least 80 % of samples (the issue's bar; README: 0.92 at
    build time, 0.91 with these seeds)."""
    import dataclasses
    import json
    from pathlib import Path

    from prefkit.models.shapes_model import BuildSettings, evaluate
    from prefkit.models.tiny import resolve_builtin

    folder = Path(resolve_builtin("tiny-shapes"))
    report = json.loads((folder / "build_report.json").read_text())
    defaults = dataclasses.asdict(BuildSettings())
    built = {"family": "sd3", **report["settings"]}  # the report predates the family option (sd3 then)
    assert {k: v for k, v in built.items() if k != "threads"} == {
        k: v for k, v in defaults.items() if k != "threads"
    }
    got = evaluate(folder, 96, seed=4243, held_out=True)
    assert got["colour_and_shape"] >= 0.8 and got["background"] >= 0.9, got
