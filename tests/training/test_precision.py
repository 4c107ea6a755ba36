"""Precision-correct ratios (prefkit.training.stored): every objective trains in bfloat16, and the ratio of the
policy to its old policy / reference is exactly 1 at the first update whatever the precision.

Dataset: tiny SD3, 16 px, 4 steps (so the start-up check has a first, middle and last step), 2 prompts x 3
samples, jpeg-labelled (pairs and per-sample scores), prompt embeddings stored. bfloat16 is accelerate's
CPU autocast (--mixed-precision bf16) or a dataset generated with --dtype bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import prefkit.training.objectives.d3po
import prefkit.training.objectives.ddpo
import prefkit.training.objectives.dense
from prefkit.schemas import validate
from prefkit.training.config import TrainConfig
from prefkit.training.run import run_train
from prefkit.training.stored import PRECISION_EPS, TOL_EPS, compute_precision, positions

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerator")


def _data(cli, model: str, out: Path, *extra) -> Path:
    args = ["generate", "--out", out, "--model", model, "--samples-per-prompt", 3, "--steps", 4]
    args += ["--height", 16, "--width", 16, "--store-embeddings", "-q", *extra]
    args += ["--prompt", "a red circle", "--prompt", "a blue square"]
    res = cli(args)
    assert res.exit_code == 0, res.output
    res = cli(["label", out, "--source", "jpeg", "-q"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def data(tiny_models, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    def cli(args):
        return CliRunner().invoke(app, [str(a) for a in args])

    return _data(cli, tiny_models["sd3"], tmp_path_factory.mktemp("prec") / "ds")


def _train(dataset: Path, out: Path, **kw) -> dict:
    kw.setdefault("max_steps", 1)
    kw.setdefault("batch_size", 3)
    kw.setdefault("checkpoint_every", 0)
    run_train(TrainConfig(dataset=str(dataset), out=str(out), quiet=True, **kw))
    summary = json.loads((out / "summary.json").read_text())
    validate(summary, "train_summary", "summary.json")
    return summary


def _spy(monkeypatch, module, name: str) -> list[tuple]:
    """Record the (detached) tensor arguments of every call of ``module.name``."""
    calls: list[tuple] = []
    original = getattr(module, name)

    def spy(*args, **kw):
        calls.append(tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args))
        return original(*args, **kw)

    monkeypatch.setattr(module, name, spy)
    return calls


def test_tolerance_comes_from_the_precision():
    assert positions(4) == [0, 2, 3] and positions(1) == [0]
    assert compute_precision(torch.float32, "no", torch.device("cpu")) == "float32"
    assert compute_precision(torch.float32, "bf16", torch.device("cpu")) == "bfloat16"
    assert compute_precision(torch.bfloat16, "no", torch.device("cpu")) == "bfloat16"
    assert PRECISION_EPS["bfloat16"] == 2.0**-7 and PRECISION_EPS["float32"] == 2.0**-23
    assert TOL_EPS * PRECISION_EPS["float32"] < 1e-4  # tighter than the fixed 1e-4 it replaces


@pytest.mark.parametrize("objective", ["ddpo", "tdpo"])
def test_first_update_ratio_is_exactly_one_in_bf16(data, tmp_path, monkeypatch, objective):
    calls = _spy(monkeypatch, prefkit.training.objectives.ddpo, "ddpo_loss")
    summary = _train(data, tmp_path / "o", objective=objective, mixed_precision="bf16", kl_coef=1.0)
    check = summary["stored_lp_check"]
    print(f"{objective} bf16: {check}")
    # not refused: the stored lp differ by bfloat16 rounding (far above 1e-4), so the old policy is live
    assert check["precision"] == "bfloat16" and check["consistent"] and not check["exact"]
    assert max(check["diff"]) > 1e-4
    assert summary["old_policy"] == "live"
    assert calls
    for lp_theta, lp_old, *_ in calls:
        assert torch.equal(torch.exp(lp_theta - lp_old), torch.ones_like(lp_theta))
    m = json.loads((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()[0])
    assert m["log_ratio"] == 0.0 and m["clipfrac"] == 0.0 and m["approx_kl"] == 0.0 and m["kl"] == 0.0


def test_init_lora_old_policy_is_the_frozen_second_adapter_in_bf16(data, tmp_path, monkeypatch):
    first = tmp_path / "first"
    _train(data, first, objective="d3po", lr=1e-2, max_steps=2, batch_size=2, mixed_precision="bf16")
    calls = _spy(monkeypatch, prefkit.training.objectives.ddpo, "ddpo_loss")
    # the dataset was sampled by the base model, so --init-lora needs --force; the old policy is then the
    # --init-lora weights (adapter "sampler", frozen), recomputed live
    summary = _train(
        data,
        tmp_path / "o",
        objective="ddpo",
        mixed_precision="bf16",
        init_lora=str(first / "lora"),
        force=True,
        max_steps=2,
        lr=1e-2,
        batch_size=2,
    )
    assert summary["old_policy"] == "live"
    n = len(calls) // 2  # the first optimizer step's calls
    for lp_theta, lp_old, *_ in calls[:n]:
        assert torch.equal(lp_theta, lp_old)
    # after an update the policy moved and the frozen old policy did not
    assert any(not torch.equal(lp_theta, lp_old) for lp_theta, lp_old, *_ in calls[n:])


@pytest.mark.parametrize("objective", ["d3po", "dense"])
def test_stored_reference_in_bf16_is_replaced_by_live_and_log_ratio_is_zero(
    data, tmp_path, monkeypatch, objective
):
    loss = "d3po_loss" if objective == "d3po" else "dense_dpo_loss"
    calls = _spy(monkeypatch, getattr(prefkit.training.objectives, objective), loss)
    summary = _train(data, tmp_path / "o", objective=objective, reference="stored", mixed_precision="bf16")
    assert summary["reference"] == "live" and not summary["stored_lp_check"]["exact"]
    assert calls
    for lp_w, ref_w, lp_l, ref_l, *_ in calls:
        assert torch.equal(lp_w - ref_w, torch.zeros_like(lp_w))
        assert torch.equal(lp_l - ref_l, torch.zeros_like(lp_l))
    # config.yaml keeps what was asked for (a resume asks the same)
    assert "reference: stored" in (tmp_path / "o" / "config.yaml").read_text()


def test_float32_keeps_the_stored_fast_path(data, tmp_path):
    summary = _train(data, tmp_path / "ddpo", objective="ddpo")
    check = summary["stored_lp_check"]
    print(f"ddpo float32: {check}")
    assert summary["old_policy"] == "stored" and check["exact"] and check["precision"] == "float32"
    summary = _train(data, tmp_path / "d3po", objective="d3po", reference="stored")
    assert summary["reference"] == "stored" and summary["stored_lp_check"]["exact"]


def test_old_policy_live_in_float32_gives_ratio_exactly_one(data, tmp_path, monkeypatch):
    calls = _spy(monkeypatch, prefkit.training.objectives.ddpo, "ddpo_loss")
    summary = _train(data, tmp_path / "o", objective="ddpo", old_policy="live")
    assert summary["old_policy"] == "live"
    for lp_theta, lp_old, *_ in calls:
        assert torch.equal(lp_theta, lp_old)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_model_trains_every_objective(tiny_models, tmp_path, cli, monkeypatch, dtype):
    """A dataset generated in bfloat16 / float16 (the model runs in it): no objective is refused, the ratios
    are exactly 1 at the first update, and the stored paths are replaced by live ones."""
    ds = _data(cli, tiny_models["sd3"], tmp_path / "ds", "--dtype", dtype)
    for objective in ("ddpo", "tdpo"):
        calls = _spy(monkeypatch, prefkit.training.objectives.ddpo, "ddpo_loss")
        summary = _train(ds, tmp_path / objective, objective=objective)
        print(f"{objective} model {dtype}: {summary['stored_lp_check']}")
        assert summary["old_policy"] == "live" and summary["stored_lp_check"]["precision"] == dtype
        assert calls
        for lp_theta, lp_old, *_ in calls:
            assert torch.equal(torch.exp(lp_theta - lp_old), torch.ones_like(lp_theta))
    for objective in ("d3po", "dense"):
        loss = "d3po_loss" if objective == "d3po" else "dense_dpo_loss"
        calls = _spy(monkeypatch, getattr(prefkit.training.objectives, objective), loss)
        summary = _train(ds, tmp_path / objective, objective=objective, reference="stored")
        assert summary["reference"] == "live"
        for lp_w, ref_w, lp_l, ref_l, *_ in calls:
            assert torch.equal(lp_w, ref_w) and torch.equal(lp_l, ref_l)
