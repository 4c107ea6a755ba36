"""Reward-driven objectives (DDPO, DPOK's KL, TDPO's critic), --init-lora and `prefkit loop`.

The losses against hand-worked numbers (worked out in the comments), DDPO's gradient against REINFORCE's,
the KL against torch.distributions, the critic on a toy target; then short training runs on the shared
jpeg-labelled dataset (tiny SD3, 3 prompts x 3 samples, 2 steps) and a one-round loop at 16 px.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from prefkit.config import LoopConfig
from prefkit.critic import TemporalCritic, active_neurons, critic_loss, reset_active_neurons
from prefkit.errors import PrefkitError
from prefkit.schemas import validate
from prefkit.training.config import TrainConfig
from prefkit.training.run import run_train

LR = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def _metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _train(dataset: Path, out: Path, **kw) -> dict:
    kw.setdefault("max_steps", 2)
    kw.setdefault("batch_size", 2)
    kw.setdefault("checkpoint_every", 0)
    return run_train(TrainConfig(dataset=str(dataset), out=str(out), quiet=True, **kw))


# -- 3. TDPO's critic --------------------------------------------------------------------------------------


def test_critic_loss_falls_on_a_toy_target():
    """The critic learns a target that depends on the latent, the step and the prompt."""
    g = torch.Generator().manual_seed(0)
    n, C, H = 256, 4, 8
    x = torch.randn(n, C, 8, 8, generator=g)
    frac = torch.randint(0, 4, (n,), generator=g).float() / 4
    prompt = torch.randn(n, H, generator=g)
    target = x.mean(dim=(1, 2, 3)) * 4 + frac - prompt[:, 0]
    critic = TemporalCritic(C, H, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(critic.parameters(), lr=3e-3)
    first = critic_loss(critic(x, frac, prompt), target).item()
    assert first == pytest.approx(0.5 * float((target**2).mean()), rel=0.05)  # V starts near 0
    for _ in range(300):
        loss = critic_loss(critic(x, frac, prompt), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


def test_reset_active_neurons_reinitialises_only_active_ones():
    g = torch.Generator().manual_seed(0)
    critic = TemporalCritic(4, 8, hidden=16, generator=g)
    opt = torch.optim.AdamW(critic.parameters(), lr=1e-2)
    feats = critic.features(
        torch.randn(32, 4, 8, 8, generator=g), torch.rand(32, generator=g), torch.randn(32, 8)
    )
    critic_loss(critic.layers(feats).squeeze(1), torch.randn(32, generator=g)).backward()
    opt.step()
    with torch.no_grad():  # make neuron 0 of the first hidden layer dormant
        critic.linears[0].weight[0] = 0.0
        critic.linears[0].bias[0] = -1.0
    masks = active_neurons(critic, feats)
    assert not bool(masks[0][0]) and int(masks[0].sum()) > 0
    before = [layer.weight.detach().clone() for layer in critic.linears]
    n = reset_active_neurons(critic, opt, feats, generator=torch.Generator().manual_seed(1))
    assert n == sum(int(m.sum()) for m in masks)
    first, second = critic.linears[0], critic.linears[1]
    active = masks[0]
    assert torch.equal(first.weight[~active], before[0][~active])  # the dormant row is kept
    assert not torch.equal(first.weight[active], before[0][active])
    assert not torch.equal(second.weight[:, active], before[1][:, active])
    state = opt.state[first.weight]
    assert float(state["exp_avg"][active].abs().max()) == 0.0
    assert float(state["exp_avg_sq"][~active].abs().max()) > 0.0


# -- 4. training runs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["ddpo", "tdpo"])
def test_first_step_ratio_is_one_and_kl_zero_then_positive(labelled_dataset, tmp_path, objective):
    out = tmp_path / objective
    _train(labelled_dataset, out, objective=objective, kl_coef=1.0, lr=1e-3, max_steps=3)
    m = _metrics(out)
    # step 1: the policy is the sampler and the base model (LoRA B = 0): ratios are 1 up to the float
    # rounding of a batch composed differently from the sampling batches (~1 ulp of lp), far inside c
    assert abs(m[0]["log_ratio"]) < 1e-6 and m[0]["clipfrac"] == 0.0 and m[0]["approx_kl"] < 1e-12
    assert m[0]["kl"] == 0.0  # adapters on (B = 0) and off give the same step mean exactly
    assert m[1]["kl"] > 0 and m[2]["kl"] > 0 and m[1]["log_ratio"] != 0.0
    for i, line in enumerate(m):
        validate(line, "metrics", f"line {i + 1}")
    summary = json.loads((out / "summary.json").read_text())
    validate(summary, "train_summary", "summary.json")
    assert summary["labels"]["samples"] == 9 and summary["objective"] == objective
    if objective == "tdpo":
        assert "critic_loss" in m[0]
        critic = load_file(str(out / "critic" / "critic.safetensors"))
        assert critic and json.loads((out / "critic" / "config.json").read_text())["hidden"] == 64


def test_kl_with_d3po_is_zero_at_step_0_then_positive(labelled_dataset, tmp_path):
    out = tmp_path / "d3po"
    _train(labelled_dataset, out, objective="d3po", kl_coef=1.0, lr=1e-3, max_steps=2)
    m = _metrics(out)
    assert m[0]["kl"] == 0.0 and m[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert m[1]["kl"] > 0


@pytest.mark.parametrize("objective", ["ddpo", "tdpo"])
def test_reward_accumulation_invariance(labelled_dataset, tmp_path, objective):
    common = {"objective": objective, "max_steps": 2, "lr": LR, "critic_reset_every": 1}
    _train(labelled_dataset, tmp_path / "b4", batch_size=4, grad_accum=1, **common)
    _train(labelled_dataset, tmp_path / "b1", batch_size=1, grad_accum=4, **common)
    a, b = _metrics(tmp_path / "b4"), _metrics(tmp_path / "b1")
    # one batch of 4 against 4 of 1: batched float32 kernels round lp differently (~1 ulp, ~2.4e-7 at
    # |lp| ~ 2), which moves each metric by a few 1e-7; Adam's sign-like update of a near-zero gradient
    # element can flip on such noise, hence "99 % of LoRA elements within 1e-6" rather than all
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "log_ratio", "score_mean", "advantage_mean", "critic_loss"):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=0, abs=1e-6), (key, x[key], y[key])
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
    lora = "lora/pytorch_lora_weights.safetensors"
    ta, tb = load_file(str(tmp_path / "b4" / lora)), load_file(str(tmp_path / "b1" / lora))
    diff = torch.cat([(ta[k] - tb[k]).abs().flatten() for k in ta])
    assert float((diff <= 1e-6).float().mean()) >= 0.99
    assert max(float(v.abs().max()) for k, v in ta.items() if "lora_B" in k) > 1e-5
    if objective == "tdpo":
        ca = load_file(str(tmp_path / "b4" / "critic" / "critic.safetensors"))
        cb = load_file(str(tmp_path / "b1" / "critic" / "critic.safetensors"))
        for k in ca:
            assert_close(ca[k], cb[k], atol=1e-5, rtol=0)


def test_tdpo_resume_restores_the_critic(labelled_dataset, tmp_path):
    run = {"objective": "tdpo", "max_steps": 4, "batch_size": 3, "checkpoint_every": 2, "lr": LR}
    _train(labelled_dataset, tmp_path / "straight", **run)
    _train(labelled_dataset, tmp_path / "resumed", **{**run, "max_steps": 2})
    assert (tmp_path / "resumed" / "checkpoint-2" / "extras.pt").is_file()
    _train(labelled_dataset, tmp_path / "resumed", **run, resume=True)
    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    assert [m["critic_loss"] for m in a] == [m["critic_loss"] for m in b]
    ca = load_file(str(tmp_path / "straight" / "critic" / "critic.safetensors"))
    cb = load_file(str(tmp_path / "resumed" / "critic" / "critic.safetensors"))
    for k in ca:
        assert torch.equal(ca[k], cb[k]), k


def test_label_set_without_scores_is_refused_naming_the_file(labelled_dataset, tmp_path):
    data = tmp_path / "ds"
    shutil.copytree(labelled_dataset, data)
    (data / "labels" / "jpeg.scores.jsonl").unlink()
    with pytest.raises(PrefkitError, match=r"jpeg\.scores\.jsonl: no such file.*pairs only"):
        _train(data, tmp_path / "out", objective="ddpo")
    assert not (tmp_path / "out").exists()


def test_bad_reward_settings_are_refused(labelled_dataset, tmp_path):
    with pytest.raises(PrefkitError, match="--score-function"):
        _train(labelled_dataset, tmp_path / "a", objective="tdpo", score_function=True)
    with pytest.raises(PrefkitError, match="--kl-coef"):
        _train(labelled_dataset, tmp_path / "b", objective="ddpo", kl_coef=-1.0)
    with pytest.raises(PrefkitError, match="old policy.*Leave out --init-lora"):
        _train(labelled_dataset, tmp_path / "c", objective="ddpo", init_lora=str(tmp_path / "lora"))


def test_init_lora_loads_the_adapter_and_refuses_a_mismatch(labelled_dataset, tmp_path):
    first = tmp_path / "first"
    _train(labelled_dataset, first, objective="d3po", lr=1e-2)
    # a run started from that LoRA, with lr 0 (AdamW moves nothing), saves the same weights again
    second = tmp_path / "second"
    _train(labelled_dataset, second, objective="d3po", lr=0.0, max_steps=1, init_lora=str(first / "lora"))
    lora = "lora/pytorch_lora_weights.safetensors"
    ta, tb = load_file(str(first / lora)), load_file(str(second / lora))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert json.loads((second / "summary.json").read_text())["init_lora"] == str((first / "lora").resolve())
    with pytest.raises(PrefkitError, match=r"--init-lora .*differ in shape.*--lora-rank 8"):
        _train(labelled_dataset, tmp_path / "r8", lora_rank=8, init_lora=str(first / "lora"))
    with pytest.raises(PrefkitError, match=r"lora_alpha 4\.0 != this run's --lora-alpha 8\.0"):
        _train(labelled_dataset, tmp_path / "a8", lora_alpha=8.0, init_lora=str(first / "lora"))
    with pytest.raises(PrefkitError, match="no pytorch_lora_weights.safetensors"):
        _train(labelled_dataset, tmp_path / "none", init_lora=str(tmp_path))


# -- 5. prefkit loop ----------------------------------------------------------------------------------------


@pytest.fixture
def scorer_module():
    return "python:prefkit_test_scorers:brightness"  # tests/prefkit_test_scorers.py, shared with test_eval


def test_loop_one_round_then_resume_adds_a_round(tiny_models, scorer_module, tmp_path, cli):
    from prefkit.loop import run_loop

    out = tmp_path / "loop"
    args = ["loop", "--out", out, "--rounds", 1, "--model", tiny_models["sd3"], "--prompt", "a cat"]
    args += ["--prompt", "a dog", "--samples-per-prompt", 3, "--steps", 2, "--height", 16, "--width", 16]
    args += [
        "--guidance",
        1,
        "--source",
        scorer_module,
        "--max-steps",
        2,
        "--batch-size",
        3,
        "--lr",
        1e-3,
        "-q",
    ]
    res = cli(args)
    assert res.exit_code == 0, res.output + res.stderr
    lines = [json.loads(ln) for ln in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [0, 1]
    assert lines[0]["sampled_with"] is None and lines[0]["lora"] == str(out / "round-000" / "train" / "lora")
    assert lines[1]["sampled_with"] == lines[0]["lora"] and lines[1]["train"] is None
    for rec in lines:
        validate(rec, "round", "rounds.jsonl")
        assert rec["samples"] == 6
    from PIL import Image

    assert Image.open(out / "rewards.png").size == (640, 400)
    manifest = json.loads((out / "round-001" / "data" / "manifest.json").read_text())
    assert manifest["settings"]["lora"] == str((out / "round-000" / "train" / "lora").resolve())
    # the base line: round 0 is the base model itself (gain exactly 0); round 1's base model sampled the
    # round's seeds and prompts, so its scores pair with the policy's sample by sample
    assert lines[0]["base_data"] == lines[0]["data"] and lines[0]["gain_mean"] == 0.0
    base = json.loads((out / "round-001" / "base" / "manifest.json").read_text())
    assert base["settings"]["lora"] is None and base["settings"]["seed"] == manifest["settings"]["seed"]
    assert lines[1]["base_data"] == str(out / "round-001" / "base")
    assert lines[1]["gain_low"] <= lines[1]["gain_mean"] <= lines[1]["gain_high"]
    assert abs(lines[1]["score_mean"] - lines[1]["base_score_mean"] - lines[1]["gain_mean"]) < 1e-9

    # --rounds 2 with --resume keeps rounds 0-1's data and training, trains round 1 from round 0's LoRA
    cfg = LoopConfig(
        out=str(out), rounds=2, model=tiny_models["sd3"], prompt=["a cat", "a dog"], samples_per_prompt=3,
        steps=2, height=16, width=16, guidance=1.0, source=scorer_module, max_steps=2, batch_size=3,
        lr=1e-3, resume=True, quiet=True,
    )  # fmt: skip
    before = (out / "round-000" / "train" / "summary.json").stat().st_mtime_ns
    records = run_loop(cfg)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert (out / "round-000" / "train" / "summary.json").stat().st_mtime_ns == before
    assert records[0]["score_mean"] == lines[0]["score_mean"]
    # round 1 trained from round 0's LoRA on data that LoRA sampled: its first ratios are exactly 1
    first = _metrics(out / "round-001" / "train")[0]
    assert abs(first["log_ratio"]) < 1e-6 and first["clipfrac"] == 0.0
    summary = json.loads((out / "round-001" / "train" / "summary.json").read_text())
    assert summary["init_lora"] == str((out / "round-000" / "train" / "lora").resolve())


def test_loop_refuses_a_non_empty_out_without_resume(tmp_path):
    from prefkit.loop import run_loop

    (tmp_path / "x").write_text("")
    with pytest.raises(PrefkitError, match="not empty"):
        run_loop(LoopConfig(out=str(tmp_path), prompt=["a"]))


def test_loop_checks_its_judge_before_round_0(tmp_path, cli):
    """A judge that cannot run (aesthetic without --weights) stops the loop before anything is generated;
    every judge option of prefkit label is a loop option too (also in --config)."""
    from prefkit.loop import run_loop

    out = tmp_path / "loop"
    with pytest.raises(PrefkitError, match="--weights"):
        run_loop(LoopConfig(out=str(out), prompt=["a"], source="aesthetic", device="cpu"))
    assert not out.exists()
    (tmp_path / "c.yaml").write_text("source: aesthetic\nweights: /no/such/file.pth\njudge-device: cpu\n")
    res = cli(["loop", "--out", str(out), "--prompt", "a", "--config", str(tmp_path / "c.yaml")])
    assert res.exit_code == 2 and "file.pth" in res.output + res.stderr, res.output
    assert not out.exists()


@pytest.mark.slow
def test_tdpo_two_processes_equal_one_process(labelled_dataset, tmp_path):
    """2 processes (gloo, CPU) x 1 sample == 1 process x 2 samples: the LoRA (DDP) and the critic (its
    gradients averaged by hand, TDPO-R's activation scores too) end up the same, to float rounding: the
    processes run batches of 1 where one process runs a batch of 2 and DDP sums gradients in another
    order, so the bounds are those of the accumulation test above (a few float32 ulps)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MASTER_PORT": port}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", port, "-m", "prefkit.cli.main"]
    two = tmp_path / "two"
    args = ["train", str(labelled_dataset), "--out", str(two), "--objective", "tdpo", "--batch-size", "1"]
    args += [
        "--max-steps",
        "2",
        "--lr",
        str(LR),
        "--checkpoint-every",
        "0",
        "--critic-reset-every",
        "1",
        "-q",
    ]
    with open(tmp_path / "launch.out", "w") as f:
        proc = subprocess.run([*launch, *args], stdout=f, stderr=subprocess.STDOUT, env=env, timeout=400)
    assert proc.returncode == 0, (tmp_path / "launch.out").read_text()
    one = tmp_path / "one"
    _train(labelled_dataset, one, objective="tdpo", batch_size=2, lr=LR, critic_reset_every=1)
    for x, y in zip(_metrics(two), _metrics(one), strict=True):
        for key in ("loss", "log_ratio", "score_mean", "critic_loss"):
            assert x[key] == pytest.approx(y[key], rel=0, abs=1e-6), (key, x[key], y[key])
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
    lora = "lora/pytorch_lora_weights.safetensors"
    ta, tb = load_file(str(two / lora)), load_file(str(one / lora))
    diff = torch.cat([(ta[k] - tb[k]).abs().flatten() for k in ta])
    assert float((diff <= 1e-6).float().mean()) >= 0.99
    ca = load_file(str(two / "critic" / "critic.safetensors"))
    cb = load_file(str(one / "critic" / "critic.safetensors"))
    for k in ca:
        assert_close(ca[k], cb[k], atol=1e-5, rtol=0)
