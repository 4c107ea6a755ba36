"""`prefkit train --objective d3po|dense` on a folder written by `prefkit publish` (or its Hub id)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

LORA = "lora/pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def dataset(labelled_dataset):
    return labelled_dataset


def _publish(dataset: Path, staging: Path, val_fraction: float) -> Path:
    from prefkit.config import PublishConfig
    from prefkit.publish import run_publish

    cfg = PublishConfig(
        dataset=str(dataset), repo_id="me/x", dry_run=True, staging=str(staging), val_fraction=val_fraction
    )
    run_publish(cfg)
    return staging


def _metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_published_folder_trains_like_the_original(dataset, tmp_path, cli):
    from prefkit.training.trajectories import load_published_pairs, load_train_pairs, open_dataset

    staging = _publish(dataset, tmp_path / "hub", 0.0)
    folder, published = open_dataset(str(staging))
    assert published and folder == staging
    gps = json.loads((staging / "trajectories" / "manifest.json").read_text())["plan"]["groups_per_shard"]
    assert load_published_pairs(staging, None, gps)[0] == load_train_pairs(dataset, None, gps)[0]

    common = ["--objective", "d3po", "--max-steps", "2", "--batch-size", "2", "--lr", "1e-3"]
    common += ["--checkpoint-every", "0", "--quiet"]
    for src, out in ((dataset, tmp_path / "a"), (staging, tmp_path / "b")):
        res = cli(["train", src, "--out", out, *common])
        assert res.exit_code == 0, res.output + res.stderr
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "accuracy", "grad_norm", "log_ratio_w", "log_ratio_l"):
            assert x[key] == y[key], (x["step"], key)
    la, lb = load_file(str(tmp_path / "a" / LORA)), load_file(str(tmp_path / "b" / LORA))
    assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)


def test_published_train_split_only_and_errors(dataset, tmp_path, cli):
    import datasets

    from prefkit.errors import PrefkitError
    from prefkit.training.trajectories import load_published_pairs

    staging = _publish(dataset, tmp_path / "hub", 0.34)
    train = datasets.load_dataset(str(staging), split="train")
    decided = {r["pair_id"] for r in train if r["has_label"] and not r["is_tie"]}
    pairs, info = load_published_pairs(staging, "jpeg", 3)
    assert {p.pair_id for p in pairs} == decided and info["split"] == "train"
    assert info["label_sets"] == ["jpeg"]
    with pytest.raises(PrefkitError, match="holds label set jpeg"):
        load_published_pairs(staging, "human", 3)

    # dense on the published folder (embeddings under trajectories/) runs end to end
    args = ["train", staging, "--out", tmp_path / "d", "--objective", "dense", "--max-steps", "1"]
    res = cli(args + ["--batch-size", "2", "--checkpoint-every", "0", "--quiet"])
    assert res.exit_code == 0, res.output + res.stderr
    assert (tmp_path / "d" / LORA).is_file()

    # a Hub id while offline (the tests run with HF_HUB_OFFLINE=1): exit 2, a clear message
    res = cli(["train", "me/not-downloaded-prefs", "--out", tmp_path / "h", "--objective", "d3po"])
    assert res.exit_code == 2
    assert "me/not-downloaded-prefs" in res.stderr and "HF_HUB_OFFLINE" in res.stderr
    assert "Traceback" not in res.output + res.stderr
    assert not (tmp_path / "h").exists()
