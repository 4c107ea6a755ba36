"""Every record a training run writes validates against schemas/: metrics lines, summary.json and the
checkpoints' trainer_state.json, for the trajectory objectives and for diffusion-dpo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefkit.errors import PrefkitError
from prefkit.schemas import validate


def _validate_run(out: Path) -> None:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert lines
    for i, line in enumerate(lines):
        validate(json.loads(line), "metrics", f"{out}/metrics.jsonl line {i + 1}")
    summary = json.loads((out / "summary.json").read_text())
    validate(summary, "train_summary", str(out / "summary.json"))
    # the end summary is the mean over the last steps (all of them here), not the last micro-batch
    records = [json.loads(line) for line in lines]
    recent = summary["recent"]
    assert (recent["steps"], recent["first_step"], recent["last_step"]) == (len(records), 1, len(records))
    for key in ("loss", "accuracy", "clipfrac"):
        if key in records[0]:
            assert recent[key] == pytest.approx(sum(r[key] for r in records) / len(records), rel=1e-12)
    states = sorted(out.glob("checkpoint-*/trainer_state.json"))
    assert states
    for path in states:
        validate(json.loads(path.read_text()), "train_summary", str(path))


@pytest.fixture(scope="module")
def jpeg_dataset(labelled_dataset):
    return labelled_dataset


@pytest.mark.parametrize("objective", ["d3po", "dense", "ddpo", "tdpo"])
def test_trajectory_objectives_write_schema_valid_records(jpeg_dataset, tmp_path, cli, objective):
    out = tmp_path / objective
    res = cli(["train", jpeg_dataset, "--out", out, "--objective", objective, "--max-steps", "2"] + ["-q"])
    assert res.exit_code == 0, res.output
    _validate_run(out)


def test_diffusion_dpo_writes_schema_valid_records(jpeg_dataset, tmp_path, cli):
    staging = tmp_path / "hub"
    res = cli(
        [
            "publish",
            jpeg_dataset,
            "--repo-id",
            "me/x",
            "--dry-run",
            "--staging",
            staging,
            "--val-fraction",
            "0",
        ]
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "ddpo"
    res = cli(["train", staging, "--out", out, "--objective", "diffusion-dpo", "--max-steps", "2", "-q"])
    assert res.exit_code == 0, res.output
    _validate_run(out)


def test_metrics_schema_rejects_a_mix_of_objectives():
    line = {
        "step": 1,
        "loss": 0.69,
        "accuracy": 0.5,
        "grad_norm": None,
        "lr": 1e-4,
        "pairs_per_s": 1.0,
        "epoch": 0,
    }
    validate({**line, "log_ratio_w": 0.0, "log_ratio_l": 0.0}, "metrics")
    with pytest.raises(PrefkitError):
        validate({**line, "log_ratio_w": 0.0, "log_ratio_l": 0.0, "err_diff_w": 0.0}, "metrics")
    with pytest.raises(PrefkitError):
        validate(line, "metrics")  # neither kind of margin
