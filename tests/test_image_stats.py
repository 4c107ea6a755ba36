"""Image statistics for reward hacking (prefkit/image_stats.py) against hand-worked values, and the
flag: the tuned images moved beyond the base images' seed-to-seed spread."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from prefkit.image_stats import STATS, compare, image_stats


def test_statistics_of_hand_made_images():
    black = image_stats(Image.new("RGB", (8, 8), (0, 0, 0)))
    assert black["dark_fraction"] == 1.0 and black["saturation"] == 0.0
    assert black["colour_entropy"] == 0.0 and black["high_frequency"] == 0.0
    red = image_stats(Image.new("RGB", (8, 8), (255, 0, 0)))
    assert red["saturation"] == 1.0 and red["dark_fraction"] == 0.0
    # vertical stripes black / white: every horizontal neighbour differs by 1 in luma, no vertical one:
    # 8 x 7 horizontal pairs of 1, 7 x 8 vertical pairs of 0 -> mean 56 / 112 = 0.5; two colours, half each
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    a[:, 1::2] = 255
    stripes = image_stats(Image.fromarray(a))
    assert stripes["high_frequency"] == pytest.approx(0.5)
    assert stripes["colour_entropy"] == pytest.approx(1.0)
    assert stripes["dark_fraction"] == 0.5
    assert stripes["jpeg_bits"] > red["jpeg_bits"]  # stripes compress worse than a flat colour
    assert set(black) == set(STATS) and all(math.isfinite(v) for v in stripes.values())


def test_compare_flags_a_move_beyond_the_seed_spread():
    rng = np.random.default_rng(0)
    base = [{name: float(v) for name in STATS} for v in rng.normal(0.5, 0.01, 16)]
    same = [dict(s) for s in base]
    report = compare(base, same)
    assert report["flagged"] == [] and report["saturation"]["difference"]["mean"] == 0.0
    brighter = [{**s, "saturation": s["saturation"] + 0.1} for s in base]  # 10 x the spread
    report = compare(base, brighter)
    assert report["flagged"] == ["saturation"]
    sat = report["saturation"]
    assert sat["difference"]["mean"] == pytest.approx(0.1) and sat["base_spread"] == pytest.approx(
        np.std([s["saturation"] for s in base], ddof=1)
    )
    # a consistent but tiny move (well inside the seed spread) is not flagged
    nudged = [{**s, "jpeg_bits": s["jpeg_bits"] + 1e-4} for s in base]
    assert compare(base, nudged)["flagged"] == []


def test_seed_spread_is_pooled_within_prompts():
    """The spread a move must exceed is what changing the seed does, not how different the prompts are:
    prompt 0's values 1, 3 and prompt 1's 11, 13 pool to sqrt((1 + 1 + 1 + 1) / (4 - 2)) = sqrt(2), where
    the standard deviation over all four is sqrt(((-6)^2 + (-4)^2 + 4^2 + 6^2) / 3) = sqrt(104 / 3)."""
    from prefkit.image_stats import seed_spread

    values, groups = [1.0, 3.0, 11.0, 13.0], [0, 0, 1, 1]
    assert seed_spread(values, groups) == pytest.approx(math.sqrt(2))
    assert seed_spread(values) == pytest.approx(math.sqrt(104 / 3))
    assert seed_spread(values, [0, 1, 2, 3]) == pytest.approx(math.sqrt(104 / 3))  # one seed per prompt
    assert seed_spread([1.0, 3.0, 5.0], [0, 0, 1]) == pytest.approx(math.sqrt(2 / 1))  # a lone seed adds 0
    # a move of 3 on every image: beyond the pooled spread (1.41), inside the plain one (5.89)
    base = [dict.fromkeys(STATS, v) for v in values]
    tuned = [{**b, "saturation": b["saturation"] + 3.0} for b in base]
    assert compare(base, tuned, groups)["flagged"] == ["saturation"]
    assert compare(base, tuned, groups)["saturation"]["base_spread"] == pytest.approx(math.sqrt(2))
    assert compare(base, tuned)["flagged"] == []
