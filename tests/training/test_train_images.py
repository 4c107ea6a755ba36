"""`prefkit train --objective diffusion-dpo`: Diffusion-DPO on final image pairs (docs/math.md section 7), through the
real training loop, on Pick-a-Pic-format data made in the test (the loss arithmetic and its sign are
pinned in tests/math/test_losses.py)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from prefkit.errors import PrefkitError
from prefkit.training.config import TrainConfig
from prefkit.training.run import run_train

LOG2 = math.log(2.0)
RED, BLUE = (220, 30, 30), (30, 30, 220)


pytestmark = pytest.mark.usefixtures("one_thread")


def _image_bytes(colour, fmt="PNG", seed=None, size=32) -> bytes:
    import numpy as np
    from PIL import Image

    if seed is None:
        im = Image.new("RGB", (size, size), colour)
    else:  # the colour plus noise: distinct images of one colour
        rng = np.random.default_rng(seed)
        arr = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype("uint8")
        im = Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _parquet(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def pickapic(tmp_path_factory) -> Path:
    """6 rows: jpg_0 won (1), jpg_1 won (0) and ties (0.5); PNG and JPEG bytes."""
    rows = []
    for i, label in enumerate([1.0, 0.0, 0.5, 1.0, 0.5, 0.0]):
        fmt = "JPEG" if i % 2 else "PNG"
        rows.append(
            {
                "caption": f"a square number {i}",
                "jpg_0": _image_bytes(RED, fmt, seed=i),
                "jpg_1": _image_bytes(BLUE, fmt, seed=100 + i),
                "label_0": label,
            }
        )
    return _parquet(tmp_path_factory.mktemp("pickapic") / "pairs.parquet", rows)


def _train(dataset, out: Path, model: str | None, **kw) -> dict:
    base = {"batch_size": 2, "max_steps": 2, "checkpoint_every": 0, "quiet": True}
    return run_train(
        TrainConfig(
            dataset=str(dataset), out=str(out), objective="diffusion-dpo", model=model, **{**base, **kw}
        )
    )


def _metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", ["sd3", "ddim"])
def test_loss_is_log2_at_step_0_and_ties_are_dropped(pickapic, tiny_models, tmp_path, family):
    last = _train(pickapic, tmp_path / "o", tiny_models[family])
    first = _metrics(tmp_path / "o")[0]
    assert first["loss"] == pytest.approx(LOG2, abs=1e-6)
    assert first["err_diff_w"] == 0 and first["err_diff_l"] == 0  # policy == reference at step 0
    assert last["ties_skipped"] == 2 and last["pairs"] == 4
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["labels"]["ties_skipped"] == 2 and summary["labels"]["pairs"] == 4
    assert summary["beta"] == (100.0 if family == "sd3" else 5000.0)  # the per-family defaults
    assert (tmp_path / "o" / "lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("family", ["sd3", "ddim"])
def test_a_step_lowers_the_loss_on_a_fixed_pair(tiny_models, tmp_path, monkeypatch, family):
    """One pair, the same (t, e) at every step: after one update the loss is below log 2 and the
    implicit reward ranks the winner first."""
    import prefkit.training.objectives.diffusion_dpo as diffusion_dpo

    monkeypatch.setattr(diffusion_dpo, "seeded_generator", lambda *a: torch.Generator().manual_seed(7))
    row = {"caption": "a square", "jpg_0": _image_bytes(RED, seed=1), "jpg_1": _image_bytes(BLUE, seed=2)}
    data = _parquet(tmp_path / "one.parquet", [{**row, "label_0": 1.0}])
    _train(data, tmp_path / "o", tiny_models[family], batch_size=1, max_steps=2, lr=1e-3)
    m = _metrics(tmp_path / "o")
    assert m[0]["loss"] == pytest.approx(LOG2, abs=1e-6)
    assert m[1]["loss"] < LOG2 - 1e-4 and m[1]["accuracy"] == 1.0, m


def _errors_vs_reference(model: str, lora: Path, images: list[bytes], draws: int = 8) -> float:
    """Mean over images and (s, e) draws of err_policy - err_reference (flow-matching velocity error)."""
    from PIL import Image

    from prefkit.families import Schedule, family_of, load_pipeline
    from prefkit.math.losses import flow_noising, logit_normal_sigmas
    from prefkit.training.images import encode_images
    from prefkit.training.lora import reference_mode

    pipe = load_pipeline(model, None, torch.float32, torch.device("cpu"), False)
    pipe.load_lora_weights(str(lora))
    family = family_of(pipe)
    x0 = encode_images(family, [Image.open(io.BytesIO(b)).convert("RGB") for b in images], 32)
    x0 = x0.repeat_interleave(draws, 0)
    g = torch.Generator().manual_seed(123)
    s = logit_normal_sigmas(len(x0), g)
    e = torch.randn(x0.shape, generator=g)
    x_t, target = flow_noising(x0, e, s)
    cond = family.encode(["a square"] * len(x0), None)
    k, sched = torch.arange(len(x0)), Schedule(timesteps=s * 1000)
    with torch.no_grad():
        err = (family.model_output(x_t, k, sched, cond, 1.0) - target).pow(2).mean((1, 2, 3))
        with reference_mode(family.denoiser):
            ref = (family.model_output(x_t, k, sched, cond, 1.0) - target).pow(2).mean((1, 2, 3))
    return float((err - ref).mean())


def _colour_run(tmp_path: Path, model: str, win, lose) -> Path:
    """8 pairs of one caption, the winner always of colour ``win`` (half of them as jpg_1)."""
    rows = [
        {
            "caption": "a square",
            "jpg_0": _image_bytes(win if i % 2 == 0 else lose, seed=i),
            "jpg_1": _image_bytes(lose if i % 2 == 0 else win, seed=50 + i),
            "label_0": 1.0 if i % 2 == 0 else 0.0,
        }
        for i in range(8)
    ]
    out = tmp_path / f"o-{win}"
    _train(_parquet(tmp_path / f"{win}.parquet", rows), out, model, batch_size=4, max_steps=15, lr=2e-3)
    late = _metrics(out)[-5:]
    assert sum(x["loss"] for x in late) / len(late) < LOG2 - 0.01, late
    return out / "lora"


def test_learning_preferring_a_colour_lowers_the_error_on_held_out_images_of_it(tiny_models, tmp_path):
    """Winners red, losers blue, one caption: the LoRA fits held-out red images better than blue ones,
    relative to the reference; with the preference swapped, the other way round (flow model)."""
    model = tiny_models["sd3"]
    red_images = [_image_bytes(RED, seed=1000 + i) for i in range(4)]
    blue_images = [_image_bytes(BLUE, seed=2000 + i) for i in range(4)]
    lora = _colour_run(tmp_path, model, RED, BLUE)
    red, blue = _errors_vs_reference(model, lora, red_images), _errors_vs_reference(model, lora, blue_images)
    assert red < blue, (red, blue)
    lora = _colour_run(tmp_path, model, BLUE, RED)
    red, blue = _errors_vs_reference(model, lora, red_images), _errors_vs_reference(model, lora, blue_images)
    assert blue < red, (red, blue)


def test_missing_model_and_offline_hub_id_are_clear_errors(pickapic, tmp_path):
    with pytest.raises(PrefkitError, match="--model is required"):
        _train(pickapic, tmp_path / "a", None)
    with pytest.raises(PrefkitError, match="could not be loaded") as info:
        _train("someone/not-a-local-dataset", tmp_path / "b", "x")
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_published_folder_trains_with_its_own_model(tiny_models, tmp_path, cli):
    """`prefkit publish --dry-run --staging` of a generated, jpeg-labelled dataset: the default config is
    read, the model comes from trajectories/manifest.json, 2 steps train."""
    data = tmp_path / "ds"
    args = ["generate", "--out", data, "--model", tiny_models["sd3"], "--samples-per-prompt", 3]
    args += ["--steps", 2, "--height", 32, "--width", 32, "--quiet", "--prompt", "a red circle"]
    args += ["--prompt", "a blue square"]
    assert (res := cli(args)).exit_code == 0, res.output
    assert (res := cli(["label", data, "--source", "jpeg", "--quiet"])).exit_code == 0, res.output
    hub = tmp_path / "hub"
    res = cli(["publish", data, "--repo-id", "me/x", "--dry-run", "--staging", hub, "--val-fraction", 0])
    assert res.exit_code == 0, res.output
    out = tmp_path / "o"
    res = cli(["train", hub, "--objective", "diffusion-dpo", "--out", out, "--max-steps", 2])
    assert res.exit_code == 0, res.output
    assert "ties dropped" in res.output
    assert [m["step"] for m in _metrics(out)] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == tiny_models["sd3"] and summary["labels"]["pairs"] > 0
