"""Reward hacking, caught by ``prefkit eval --gold``: on the built-in tiny-shapes model, D3PO trained
against DDPO's JPEG compressibility reward (a proxy: smaller files win) learns to paint the picture over
in one colour, which compresses best, so the shapes judge, which training never saw, falls. Eval with
``--gold shapes`` must flag it, and the grid must mark samples.

Through the real CLI: generate (16 shapes captions x 4 samples, 10 steps, no CFG) -> label --source jpeg
-> train d3po (lr 1e-2, 20 steps of 8 pairs, half the steps, no KL) -> eval --gold shapes on 16 held-out
captions x 4 seeds. The smallest settings tried where it fires every time: on data of generate --seed
0 / 1 / 2, proxy gain +0.160 [0.115, 0.206] / +0.153 [0.102, 0.204] / +0.090 [0.048, 0.133] kB, gold gain
-0.48 [-0.58, -0.38] / -0.51 [-0.61, -0.40] / -0.41 [-0.50, -0.32], high-frequency energy flagged in all
three (with colour entropy, JPEG bits or the dark fraction); with 10 training steps (8 sampling steps) the
proxy did not rise significantly on any of the three (its interval held 0) while gold already fell. About
2 minutes on one shared core. The assertions keep wide margins (the run depends on the CPU's float
rounding); the README-sized run is in docs/results.md.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from prefkit.schemas import validate

SAMPLES, STEPS = 4, 10
TRAIN = [
    "--objective",
    "d3po",
    "--lr",
    1e-2,
    "--max-steps",
    20,
    "--batch-size",
    8,
    "--timestep-fraction",
    0.5,
]
TRAIN += ["--kl-coef", 0, "--reference", "stored", "--seed", 0]


def _ok(res):
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.slow
def test_compressibility_hacking_is_flagged_by_the_gold_judge(cli, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    _ok(cli(["generate", "--out", data, "--prompts", "shapes", "--samples-per-prompt", SAMPLES, "--steps", STEPS]
            + ["--guidance", 1, "-q"]))  # fmt: skip
    _ok(cli(["label", data, "--source", "jpeg", "-q"]))
    _ok(cli(["train", data, "--out", run, *TRAIN, "-q"]))
    res = _ok(cli(["eval", "--lora", run / "lora", "--gold", "shapes", "--samples-per-prompt", 4, "--no-kl"]))
    assert "REWARD HACKING" in res.output
    out = run / "eval"
    report = json.loads((out / "report.json").read_text())
    validate(report, "eval")
    s = report["summary"]
    g = s["gold"]
    seen = f"proxy {g['proxy_gain']}; gold {g['gold_gain']}; image stats {s['image_stats']['flagged']}"
    assert report["judge"]["source"] == "jpeg" and g["source"] == "shapes"  # the proxy: training's judge
    assert g["hacking"] and g["status"] == "hacking", seen
    # with margin: the proxy rose well clear of its interval, gold fell by far more than its closeness terms
    assert g["proxy_gain"]["low"] > 0 and g["proxy_gain"]["mean"] > 0.02, seen  # kB smaller
    assert g["gold_gain"]["high"] < 0 and g["gold_gain"]["mean"] < -0.05, seen
    assert s["image_stats"]["flagged"], seen  # two or three of them in every run seen
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    marked = [r for r in rows if "gold" in r["marks"]]
    assert len(marked) >= 4 and s["marked"] >= len(marked)
    for r in marked:  # a mark means: a proxy win and a gold loss on that seed
        assert r["outcome"] == "win" and r["gold_tuned"] < r["gold_base"]
    # grid.png: at least one of its tuned images has the red border (its left edge, 1 px left of the image)
    from prefkit.grid import MARK_COLOUR

    shown = [r for r in marked if r["group"] < 8 and r["index"] < 4]
    assert shown, "no marked sample among those the grid shows"
    r = shown[0]
    with Image.open(out / "grid.png") as grid:
        x = 4 + (2 * r["index"] + 1) * (128 + 4)  # 32 px images enlarged 4x to 128 px cells
        top = 4 + r["group"] * (14 + 13 + 128 + 4) + 14 + 13
        assert grid.convert("RGB").getpixel((x - 1, top + 64)) == MARK_COLOUR
