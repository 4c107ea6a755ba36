"""`prefkit train`: the losses' arithmetic, and the training loop's invariances (docs/math.md sections 5-6, 12 and 14).

Datasets are generated and labelled once per module (tiny models, 32 px, 3 denoising steps) by a custom
scorer (mean brightness of the PNG). Each run trains a few optimizer steps in-process, except the
two-process run, which goes through ``accelerate launch``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from prefkit.errors import PrefkitError
from prefkit.training.config import RESUME_KEYS, TrainConfig
from prefkit.training.run import run_train

LOG2 = math.log(2.0)
# learning rate of the invariance runs: 2 AdamW steps move each LoRA B entry by ~2e-4, 200x the 1e-6
# tolerance (Adam's update is ~lr x sign(g) at first, and amplifies rounding where g2 ~ -g1: a larger lr
# scales both the movement and those differences)
LR = 1e-4
SCORER = "prefkit_test_train_scorer"
SUBPROCESS_TIMEOUT = 400
# the metrics of a step that must agree between two runs that should be the same run (not the timing).
# Runs that batch differently (B x A, processes, stored vs live lp, embeddings vs encoders) agree to float
# rounding (~1e-7 on each lp): compared within a tolerance, without the accuracy, the share of margins
# > 0, which flips on a pair whose margin is within rounding of 0 (dense with c = 1e-4: a few float32
# ulps of lp). A resumed run repeats the same computations: its accuracy is compared too.
CONTINUOUS = ("loss", "log_ratio_w", "log_ratio_l", "grad_norm", "lr", "epoch")
COMPARED = ("accuracy", *CONTINUOUS)


def softplus_neg(z: float) -> float:
    """-log sigmoid(z) = log(1 + e^-z), the per-pair DPO loss at margin z."""
    return math.log1p(math.exp(-z))


# -- fixtures ------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_thread")


def _invoke(args: list) -> object:
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    """python:MODULE:brightness, a scorer of (images, prompts): the mean pixel value of each image."""
    folder = tmp_path_factory.mktemp("scorer")
    (folder / f"{SCORER}.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def brightness(images, prompts):
                return [float(np.asarray(im.convert("RGB"), dtype=np.float64).mean()) for im in images]
            """
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        yield f"python:{SCORER}:brightness"


def _make_dataset(out: Path, model: str, prompts: list[str], samples: int, source: str, *extra) -> Path:
    prompt_args = [a for p in prompts for a in ("--prompt", p)]
    res = _invoke(
        ["generate", "--out", out, "--model", model, *prompt_args, "--samples-per-prompt", samples]
        + ["--steps", 3, "--height", 32, "--width", 32, "--batch-size", 4, "-q", *extra]
    )
    assert res.exit_code == 0, res.output
    res = _invoke(["label", out, "--source", source, "-q"])
    assert res.exit_code == 0, res.output
    return out


def _decided_pairs(folder: Path) -> int:
    (name,) = [p.name[: -len(".meta.json")] for p in (folder / "labels").glob("*.meta.json")]
    recs = [json.loads(ln) for ln in (folder / "labels" / f"{name}.jsonl").read_text().splitlines()]
    return sum(1 for r in recs if r["has_label"] and not r["is_tie"])


@pytest.fixture(scope="module")
def sd3_data(tiny_models, scorer, tmp_path_factory) -> Path:
    """3 prompts x 3 samples of tiny SD3: 9 pairs, so that 2 global batches of 4 stay in epoch 0."""
    folder = _make_dataset(
        tmp_path_factory.mktemp("data") / "sd3",
        tiny_models["sd3"],
        ["a red circle", "a cat", "a blue square"],
        3,
        scorer,
    )
    assert _decided_pairs(folder) == 9
    return folder


@pytest.fixture(scope="module")
def emb_data(tiny_models, scorer, tmp_path_factory) -> Path:
    """Tiny SD3 with --store-embeddings: 2 prompts x 2 samples, 2 pairs."""
    folder = _make_dataset(
        tmp_path_factory.mktemp("data") / "emb",
        tiny_models["sd3"],
        ["a red circle", "a cat"],
        2,
        scorer,
        "--store-embeddings",
    )
    assert (folder / "embeddings").is_dir() and _decided_pairs(folder) == 2
    return folder


@pytest.fixture(scope="module")
def ddim_data(tiny_models, scorer, tmp_path_factory) -> Path:
    """Tiny SD 1.5 (DDIM, eta 1): 1 prompt x 3 samples, 3 pairs."""
    folder = _make_dataset(
        tmp_path_factory.mktemp("data") / "ddim", tiny_models["ddim"], ["a red circle"], 3, scorer
    )
    assert _decided_pairs(folder) == 3
    return folder


def _train(dataset: Path, out: Path, **kw) -> dict:
    kw.setdefault("max_steps", 2)
    kw.setdefault("batch_size", 2)
    return run_train(TrainConfig(dataset=str(dataset), out=str(out), quiet=True, **kw))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _assert_same_metrics(a: list[dict], b: list[dict], atol: float, keys=CONTINUOUS) -> None:
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b, strict=True):
        for key in keys:
            assert x[key] == pytest.approx(y[key], rel=0, abs=atol), (x["step"], key, x[key], y[key])
        # AdamW is almost blind to the gradient's scale: the norm before clipping catches a
        # mis-scaled loss (e.g. a missing 1 / grad_accum) that the weights would not show
        if "grad_norm" in keys:
            assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5), x["step"]


def _lora(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same_lora(a: Path, b: Path, atol: float) -> None:
    ta, tb = _lora(a), _lora(b)
    assert ta and ta.keys() == tb.keys()
    for key in ta:
        assert_close(ta[key], tb[key], atol=atol, rtol=0, msg=lambda m, key=key: f"{key}: {m}")


def _lora_b_max(path: Path) -> float:
    """Largest |entry| of the LoRA B matrices: zero at initialisation, so this is how far training moved."""
    t = _lora(path)
    return max(float(v.abs().max()) for k, v in t.items() if "lora_B" in k)


# -- 1. log 2 at the first step ---------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["d3po", "dense"])
def test_first_training_step_loss_is_log2(sd3_data, tmp_path, objective):
    _train(sd3_data, tmp_path / "o", objective=objective, max_steps=1)
    (first,) = _metrics(tmp_path / "o")
    assert first["step"] == 1
    assert abs(first["loss"] - LOG2) < 1e-6, first
    # the LoRA starts at B = 0: the policy IS the reference, every log-ratio is exactly 0
    assert first["log_ratio_w"] == 0.0 and first["log_ratio_l"] == 0.0, first


# -- 5. batch 4 x accumulation 1 == batch 1 x accumulation 4 -----------------------------------------------


@pytest.mark.parametrize("objective", ["d3po", "dense"])
def test_accumulation_invariance(sd3_data, tmp_path, objective):
    # 9 decided pairs: one epoch = 8 positions = the 2 steps of a global batch of 4, in both runs
    common = {"objective": objective, "max_steps": 2, "lr": LR, "checkpoint_every": 0}
    _train(sd3_data, tmp_path / "b4", batch_size=4, grad_accum=1, **common)
    _train(sd3_data, tmp_path / "b1", batch_size=1, grad_accum=4, **common)
    a, b = _metrics(tmp_path / "b4"), _metrics(tmp_path / "b1")
    # the loss is a function of beta x (lp differences): a rounding difference of one float32 ulp of lp
    # (~2.4e-7 at |lp| ~ 2) moves the dense loss (beta 10) by ~1e-6, the d3po loss (beta 0.1) by ~1e-8
    _assert_same_metrics(a, b, atol=1e-6 if objective == "d3po" else 1e-5)
    lora = "lora/pytorch_lora_weights.safetensors"
    if objective == "d3po":
        _assert_same_lora(tmp_path / "b4" / lora, tmp_path / "b1" / lora, atol=1e-6)
    else:
        # AdamW divides by sqrt(v): an element whose gradient is ~0 (the dense loss clips log-ratios at
        # c = 1e-4, so many are) has an update of ~lr x sign(float noise), whichever order the sum was
        # taken in. So: nearly every element equal to 1e-6, and none apart by more than the largest
        # possible update (2 lr per step). Another pair or a missing 1/grad-accum moves most elements
        # (and the grad norm, checked above to a relative 1e-5).
        ta, tb = _lora(tmp_path / "b4" / lora), _lora(tmp_path / "b1" / lora)
        diff = torch.cat([(ta[k] - tb[k]).abs().flatten() for k in ta])
        assert float((diff <= 1e-6).float().mean()) >= 0.99
        assert float(diff.max()) <= 2 * LR * common["max_steps"]
    assert _lora_b_max(tmp_path / "b4" / lora) > 1e-4  # the weights moved well beyond the tolerance


# -- 6. resume == uninterrupted ----------------------------------------------------------------------------

RESUME_RUN = {"max_steps": 4, "batch_size": 3, "checkpoint_every": 2, "lr": LR}


@pytest.fixture(scope="module")
def uninterrupted(sd3_data, tmp_path_factory) -> Path:
    """4 steps of 3 pairs straight through (9 pairs: epoch 0 is 3 steps, step 4 starts epoch 1)."""
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    _train(sd3_data, out, **RESUME_RUN)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    return out


def test_resume_equals_uninterrupted(sd3_data, uninterrupted, tmp_path):
    assert "max_steps" not in RESUME_KEYS  # extending a finished run is a resume, not a new run
    out = tmp_path / "resumed"
    _train(sd3_data, out, **{**RESUME_RUN, "max_steps": 2})
    assert [m["step"] for m in _metrics(out)] == [1, 2]
    # as if the process had died after logging step 3, before its checkpoint: the line must go
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**_metrics(out)[-1], "step": 3, "loss": 123.0}) + "\n")
    _train(sd3_data, out, **RESUME_RUN, resume=True)
    ours, theirs = _metrics(out), _metrics(uninterrupted)
    assert [m["step"] for m in ours] == [1, 2, 3, 4]  # no duplicated step lines
    # the same computations on the same pairs in the same shapes: equal to the last bit. In particular
    # the log-ratios of steps 3-4 (~1e-6) are still against the base model, not the resumed policy
    _assert_same_metrics(ours, theirs, atol=0, keys=COMPARED)
    assert ours[2]["log_ratio_w"] != 0 and ours[2]["log_ratio_l"] != 0
    lora = "lora/pytorch_lora_weights.safetensors"
    _assert_same_lora(out / lora, uninterrupted / lora, atol=0)
    _assert_same_lora(
        out / "checkpoint-4" / "lora_peft.safetensors",
        uninterrupted / "checkpoint-4" / "lora_peft.safetensors",
        atol=0,
    )
    assert _lora_b_max(out / lora) > 1e-4
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["step"] == 4


def test_resume_with_other_settings_is_refused(sd3_data, uninterrupted, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(uninterrupted, out)
    with pytest.raises(PrefkitError, match=r"settings differ.*lr: was 0\.0001, now 0\.0002"):
        _train(sd3_data, out, **{**RESUME_RUN, "lr": 2e-4}, resume=True)


# -- 7. two processes == one process -------------------------------------------------------------------------

_TRAIN_LOG_MODULE = """
import json, os

from prefkit.cli.main import main
from prefkit.training.objectives.d3po import D3PO

_call = D3PO.__call__


def logged_call(self, batch, sync):
    accelerator, net = self.accelerator, self.run.net
    with open(os.environ["PREFKIT_TEST_TRAIN_LOG"], "a") as f:
        f.write(json.dumps({
            "rank": accelerator.process_index,
            "world": accelerator.num_processes,
            "pid": os.getpid(),
            "net": type(net).__name__,
            "family_net_is_net": self.family.net is net,
            "positions": batch.positions,
            "pairs": [p.pair_id for p in batch.items],
        }) + "\\n")
    return _call(self, batch, sync)


D3PO.__call__ = logged_call
main()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(sd3_data, tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "prefkit_test_train_log.py").write_text(_TRAIN_LOG_MODULE)
    log = tmp_path / "train.log"
    port = str(_free_port())
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")]),
        "PREFKIT_TEST_TRAIN_LOG": str(log),
        "MASTER_PORT": port,
    }
    # accelerate 1.x starts several CPU processes only through its torchrun path (--multi_gpu); with
    # --cpu alone and no mpirun host file it starts ONE process, whatever --num_processes says
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", port, "-m", "prefkit_test_train_log"]
    two = tmp_path / "two"
    args = ["train", str(sd3_data), "--out", str(two), "--batch-size", "1", "--max-steps", "2"]
    args += ["--lr", str(LR), "--checkpoint-every", "0", "-q"]
    with open(tmp_path / "launch.out", "w") as f:
        proc = subprocess.run(
            [*launch, *args], stdout=f, stderr=subprocess.STDOUT, env=env, timeout=SUBPROCESS_TIMEOUT
        )
    assert proc.returncode == 0, (tmp_path / "launch.out").read_text()

    # both processes ran, as ranks 0 and 1 of 2, through the DDP-wrapped denoiser (family.net)
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    by_rank: dict[int, list[dict]] = {}
    for r in records:
        assert r["world"] == 2 and r["net"] == "DistributedDataParallel" and r["family_net_is_net"], r
        by_rank.setdefault(r["rank"], []).append(r)
    assert sorted(by_rank) == [0, 1]
    assert {r["pid"] for r in by_rank[0]}.isdisjoint({r["pid"] for r in by_rank[1]})
    # micro-batch m: rank r takes position 2m + r of the epoch's order
    assert [r["positions"] for r in by_rank[0]] == [[0], [2]]
    assert [r["positions"] for r in by_rank[1]] == [[1], [3]]

    # one process, batch 2: the same pairs per step, the same metrics and the same LoRA
    seen: list[list[str]] = []
    from prefkit.training.objectives.d3po import D3PO

    original = D3PO.__call__

    def record(self, batch, sync):
        assert self.accelerator.num_processes == 1
        seen.append([p.pair_id for p in batch.items])
        return original(self, batch, sync)

    monkeypatch.setattr(D3PO, "__call__", record)
    one = tmp_path / "one"
    _train(sd3_data, one, batch_size=2, max_steps=2, lr=LR, checkpoint_every=0)
    assert seen == [by_rank[0][m]["pairs"] + by_rank[1][m]["pairs"] for m in range(2)]
    _assert_same_metrics(_metrics(two), _metrics(one), atol=1e-5)
    lora = "lora/pytorch_lora_weights.safetensors"
    _assert_same_lora(two / lora, one / lora, atol=1e-5)
    assert _lora_b_max(one / lora) > 1e-4


# -- 8. --reference stored ---------------------------------------------------------------------------------


def test_stored_reference_equals_live_on_the_sampling_model(sd3_data, tmp_path, monkeypatch):
    import prefkit.sampling

    # count the gradient-free forward passes over a whole training micro-batch (2B = 4 samples):
    # the live reference makes S = 3 per micro-batch, the stored one none (the check of the stored lp
    # before training recomputes single samples)
    original = prefkit.sampling.step_distribution
    ref_passes = {"n": 0}

    def spy(family, x, *args, **kw):
        if not torch.is_grad_enabled() and x.shape[0] == 4:
            ref_passes["n"] += 1
        return original(family, x, *args, **kw)

    monkeypatch.setattr(prefkit.sampling, "step_distribution", spy)
    common = {"max_steps": 2, "lr": LR, "checkpoint_every": 0}
    _train(sd3_data, tmp_path / "live", reference="live", **common)
    assert ref_passes["n"] == 2 * 3
    ref_passes["n"] = 0
    _train(sd3_data, tmp_path / "stored", reference="stored", **common)
    assert ref_passes["n"] == 0
    live, stored = _metrics(tmp_path / "live"), _metrics(tmp_path / "stored")
    assert abs(stored[0]["loss"] - LOG2) < 1e-6
    _assert_same_metrics(stored, live, atol=1e-6)
    lora = "lora/pytorch_lora_weights.safetensors"
    _assert_same_lora(tmp_path / "stored" / lora, tmp_path / "live" / lora, atol=1e-6)
    assert _lora_b_max(tmp_path / "live" / lora) > 1e-4
    summary = json.loads((tmp_path / "stored" / "summary.json").read_text())
    assert summary["reference"] == "stored"


def _refused(cli, args: list, out: Path, *needles: str) -> str:
    res = cli(["train", *args, "--out", out, "--max-steps", 1, "-q"])
    text = res.output + res.stderr
    assert res.exit_code == 2, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert not out.exists() or not any(out.iterdir())  # nothing written
    return text


def test_stored_reference_is_refused_on_a_mismatching_dataset(sd3_data, tmp_path, cli):
    from prefkit.models.tiny import build_tiny_sd3

    other = build_tiny_sd3(tmp_path / "other-sd3", seed=1)
    # another model than the one that sampled the dataset
    _refused(cli, [sd3_data, "--model", other, "--reference", "stored"], tmp_path / "o1", "--model", "stored")
    # the same, even with --force
    _refused(cli, [sd3_data, "--model", other, "--reference", "stored", "--force"], tmp_path / "o1", "stored")
    # a dataset that CLAIMS to come from the other model (its manifest says so), but whose stored lp
    # were sampled by the first one: only the live recomputation can tell
    fake = tmp_path / "fake"
    shutil.copytree(sd3_data, fake)
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest["settings"]["model"] = str(other)
    (fake / "manifest.json").write_text(json.dumps(manifest))
    _refused(
        cli,
        [fake, "--reference", "stored"],
        tmp_path / "o2",
        "--reference stored refused",
        "live recomputation",
    )


def test_guidance_mismatch_needs_force(sd3_data, tmp_path, cli):
    text = _refused(cli, [sd3_data, "--guidance", 3], tmp_path / "o", "--guidance 3.0", "5.0", "--force")
    assert "differ" in text
    _refused(cli, [sd3_data, "--guidance", 3, "--force", "--reference", "stored"], tmp_path / "o", "stored")
    res = cli(
        ["train", sd3_data, "--out", tmp_path / "o", "--guidance", 3, "--force", "--max-steps", 1, "-q"]
    )
    assert res.exit_code == 0, res.output + res.stderr
    (first,) = _metrics(tmp_path / "o")
    assert abs(first["loss"] - LOG2) < 1e-6


# -- 9. the saved LoRA loads into a fresh pipeline -------------------------------------------------------------


@pytest.mark.parametrize("family,alpha", [("sd3", 8.0), ("ddim", None)], ids=["sd3-alpha8", "ddim-unet"])
def test_saved_lora_loads_into_a_fresh_pipeline(request, tiny_models, tmp_path, family, alpha):
    from diffusers import DiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    data = request.getfixturevalue("sd3_data" if family == "sd3" else "ddim_data")
    out = tmp_path / "o"
    _train(data, out, max_steps=2, lr=1e-2, lora_rank=4, lora_alpha=alpha, checkpoint_every=0)
    assert _lora_b_max(out / "lora" / "pytorch_lora_weights.safetensors") > 1e-3

    def latents(pipe):
        return pipe(
            "a red circle",
            num_inference_steps=2,
            guidance_scale=5.0,
            height=32,
            width=32,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).images

    pipe = DiffusionPipeline.from_pretrained(tiny_models[family])
    pipe.set_progress_bar_config(disable=True)
    before = latents(pipe)
    assert torch.equal(before, latents(pipe))  # the comparison is deterministic
    pipe.load_lora_weights(str(out / "lora"))
    after = latents(pipe)
    assert (after - before).abs().max() > 1e-4

    # every trained tensor arrived, at the trained rank and scale
    denoiser = pipe.transformer if family == "sd3" else pipe.unet
    (name,) = list(denoiser.peft_config)
    loaded = get_peft_model_state_dict(denoiser, adapter_name=name)
    trained = _lora(out / "checkpoint-2/lora_peft.safetensors")
    assert loaded.keys() == trained.keys()
    for key, value in trained.items():
        assert_close(loaded[key], value, atol=0, rtol=0, msg=key)
    cfg = denoiser.peft_config[name]
    assert cfg.r == 4 and cfg.lora_alpha == (alpha or 4.0)


# -- 10. a non-finite loss stops the run ------------------------------------------------------------------------


def test_nan_loss_stops_with_the_step_and_last_checkpoint(sd3_data, uninterrupted, tmp_path, monkeypatch):
    import prefkit.training.objectives.d3po as d3po

    original = d3po.d3po_loss
    calls = {"n": 0}

    # d3po: one loss call per trained step (K = 3) per micro-batch; calls 7.. belong to optimizer step 3
    def poisoned(*args, **kw):
        calls["n"] += 1
        res = original(*args, **kw)
        if calls["n"] > 2 * 3:
            res.loss = res.loss * float("nan")
        return res

    monkeypatch.setattr(d3po, "d3po_loss", poisoned)
    out = tmp_path / "o"
    with pytest.raises(PrefkitError) as info:
        _train(sd3_data, out, **RESUME_RUN)
    msg = str(info.value)
    assert "step 3" in msg and "nan" in msg and str(out / "checkpoint-2") in msg, msg
    assert calls["n"] == 7  # stopped at the first non-finite loss, before any backward of step 3
    # checkpoint-2 is there and intact: equal to the uninterrupted run's; nothing after it was written
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "config.yaml", "metrics.jsonl"]
    assert [m["step"] for m in _metrics(out)] == [1, 2]
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["step"] == 2
    for f in ("lora_peft.safetensors", "pytorch_lora_weights.safetensors"):
        _assert_same_lora(out / "checkpoint-2" / f, uninterrupted / "checkpoint-2" / f, atol=0)
    # the same through the CLI: exit 2 and the message
    calls["n"] = 0
    res = _invoke(
        ["train", sd3_data, "--out", tmp_path / "o2", "--batch-size", 3, "--max-steps", 4]
        + ["--checkpoint-every", 2, "-q"]
    )
    text = res.output + res.stderr
    assert res.exit_code == 2 and "step 3" in text and "checkpoint-2" in text, text
    # and the run resumes from it to the uninterrupted result
    monkeypatch.setattr(d3po, "d3po_loss", original)
    _train(sd3_data, out, **RESUME_RUN, resume=True)
    lora = "lora/pytorch_lora_weights.safetensors"
    _assert_same_lora(out / lora, uninterrupted / lora, atol=1e-6)


# -- 11. stored prompt embeddings: no text encoders ------------------------------------------------------------


def test_store_embeddings_trains_without_text_encoders(emb_data, tmp_path, monkeypatch):
    import prefkit.families

    plain = tmp_path / "plain"
    shutil.copytree(emb_data, plain)
    shutil.rmtree(plain / "embeddings")
    loads: list[tuple[bool, bool]] = []
    original = prefkit.families.load_pipeline

    def spy(*args, **kw):
        pipe = original(*args, **kw)
        without = bool(args[4] if len(args) > 4 else kw.get("without_text_encoders", False))
        loads.append((without, getattr(pipe, "text_encoder", None) is None))
        return pipe

    monkeypatch.setattr(prefkit.families, "load_pipeline", spy)
    common = {"max_steps": 2, "batch_size": 2, "lr": LR, "checkpoint_every": 0}
    _train(emb_data, tmp_path / "with-emb", **common)
    _train(plain, tmp_path / "with-te", **common)
    assert loads == [(True, True), (False, False)]
    a, b = _metrics(tmp_path / "with-emb"), _metrics(tmp_path / "with-te")
    assert abs(a[0]["loss"] - LOG2) < 1e-6
    # grad_norm of step 1 and every metric of step 2 depend on the conditioning
    _assert_same_metrics(a, b, atol=1e-6)
    assert a[0]["grad_norm"] > 0
    lora = "lora/pytorch_lora_weights.safetensors"
    _assert_same_lora(tmp_path / "with-emb" / lora, tmp_path / "with-te" / lora, atol=1e-6)


# -- 12. bad input ----------------------------------------------------------------------------------------------


@pytest.fixture
def bad_datasets(sd3_data, tmp_path) -> dict[str, Path]:
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(sd3_data, unlabelled)
    shutil.rmtree(unlabelled / "labels")
    two_sets = tmp_path / "two-sets"
    shutil.copytree(sd3_data, two_sets)
    for f in list((two_sets / "labels").iterdir()):
        shutil.copy(f, f.with_name(f.name.replace("brightness", "other", 1)))
    assert len(list((two_sets / "labels").glob("*.meta.json"))) == 2
    return {"unlabelled": unlabelled, "two-sets": two_sets}


@pytest.mark.parametrize(
    "case",
    [
        ("missing-dataset", lambda d, t: [t / "nope"], ["DATASET", "nope", "no such folder"]),
        ("no-labels", lambda d, t: [d["unlabelled"]], ["--labels", "prefkit label"]),
        ("several-label-sets", lambda d, t: [d["two-sets"]], ["--labels", "brightness", "other"]),
        ("unknown-label-set", lambda d, t: [d["two-sets"], "--labels", "nosuch"], ["nosuch", "brightness"]),
        (
            "objective-foo",
            lambda d, t: [d["two-sets"], "--objective", "foo"],
            ["--objective foo", "d3po", "dense"],
        ),
        ("reference-foo", lambda d, t: [d["two-sets"], "--reference", "foo"], ["--reference foo", "live"]),
        ("batch-size-0", lambda d, t: [d["two-sets"], "--batch-size", 0], ["--batch-size 0", "at least 1"]),
    ],
    ids=lambda c: c[0],
)
def test_bad_input_exits_2_and_writes_nothing(cli, bad_datasets, tmp_path, case):
    _, args, needles = case
    out = tmp_path / "out"
    _refused(cli, args(bad_datasets, tmp_path), out, *needles)
    assert not out.exists()


def test_non_empty_out_without_resume_is_refused(cli, sd3_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = cli(["train", sd3_data, "--out", out, "--max-steps", 1, "-q"])
    text = res.output + res.stderr
    assert res.exit_code == 2 and "not empty" in text and "--resume" in text, text
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["train", "generate", "label"])
def test_progress_display_without_quiet(cli, sd3_data, tiny_models, tmp_path, command, scorer):
    """The commands as a person runs them: with the live display on (no --quiet)."""
    if command == "train":
        args = ["train", sd3_data, "--out", tmp_path / "o", "--max-steps", "2", "--batch-size", "1"]
        expect = "trained 2 steps; mean of steps 1-2: loss "  # then the steps' peak memory (MiB)
    elif command == "generate":
        args = [
            "generate",
            "--out",
            tmp_path / "g",
            "--model",
            tiny_models["sd3"],
            "--prompt",
            "a cat",
            "--steps",
            "2",
        ]
        expect = "wrote 4 trajectories"
    else:
        args = ["label", sd3_data, "--source", "jpeg", "--name", "jpeg-progress"]
        expect = "label set 'jpeg-progress'"
    res = cli(args)
    assert res.exit_code == 0, res.output
    assert expect in res.output
    if command == "train":  # the steps' peak apart from loading's (prefkit.memory; Linux)
        assert re.search(r"peak memory [\d,]+ MiB in the steps \([\d,]+ MiB while loading\)", res.output)


# -- 12. validation images ----------------------------------------------------------------------------------


def test_validation_images_every_n_steps_do_not_change_training(sd3_data, tmp_path):
    """--validation-prompt / --validation-every: OUT/validation/step-N.png every N steps, sampled with fixed
    seeds through the LoRA'd denoiser; the training run itself is unchanged (same metrics and LoRA)."""
    from PIL import Image

    # the module's dataset may hold other tests' label sets by now: name the scorer's
    common = {"max_steps": 2, "lr": LR, "checkpoint_every": 0, "labels": "brightness"}
    plain = _train(sd3_data, tmp_path / "plain", **common)
    seen = _train(
        sd3_data,
        tmp_path / "val",
        validation_prompts=["a red circle", "a blue square"],
        validation_every=1,
        **common,
    )
    files = sorted(p.name for p in (tmp_path / "val" / "validation").iterdir())
    assert files == ["step-000001.png", "step-000002.png"]
    w, h = Image.open(tmp_path / "val" / "validation" / files[0]).size
    assert w > 2 * 32 and h > 32  # two captioned 32 px images
    assert plain["loss"] == seen["loss"] and plain["grad_norm"] == seen["grad_norm"]  # identical computations
    lora = "lora/pytorch_lora_weights.safetensors"
    _assert_same_lora(tmp_path / "plain" / lora, tmp_path / "val" / lora, atol=0)
    with pytest.raises(PrefkitError, match="--validation-every needs the prompts"):
        _train(sd3_data, tmp_path / "x", validation_every=1, **common)
