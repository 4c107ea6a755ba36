"""A fast smoke test: the benchmark runs and reports every figure with its ratio (no timing asserted)."""

from __future__ import annotations

import json
import statistics

import pytest


@pytest.mark.slow
def test_bench_reports_every_figure(cli, tiny_models, tmp_path):
    out = tmp_path / "bench.json"
    res = cli(
        ["bench", "all", "--model", tiny_models["sd3"], "--steps", "2", "--batch-size", "2", "--repeats", "1"]
        + ["--json", out]
    )
    assert res.exit_code == 0, res.output
    figures = json.loads(out.read_text())
    names = [f["figure"] for f in figures]
    expected = [
        ("generate (", "trajectory", "ms", 1.05),
        ("bytes on disk per trajectory (4 x 64 x 64 latents", "trajectory", "KiB", 1.10),
        ("D3PO layout", "trajectory", "KiB", None),
        ("train step, --reference stored (", "optimizer step", "ms", 1.10),
        ("train step, --reference stored vs live", "optimizer step", "ms", None),
        ("shard read throughput", "samples/s", "samples/s", 10.0),
        ("peak memory, train (reference = adapters off) (", "training run", "MiB", 1.05),
        ("peak memory, train (reference = adapters off) vs a deep copy", "training run", "MiB", None),
    ]
    assert len(figures) == len(expected), names
    for f, (prefix, unit, quantity, target) in zip(figures, expected, strict=True):
        assert f["figure"].startswith(prefix), f["figure"]
        assert (f["unit"], f["quantity"], f["target"]) == (unit, quantity, target)
        assert f["measured"] > 0 and f["baseline_measured"] > 0, f
        assert f["repeats"] == 1
        # one repeat: the median ratio is the ratio of the two values
        assert abs(f["ratio_median"] - f["measured"] / f["baseline_measured"]) < 1e-9 * f["ratio_median"]
        assert f["ratio_min"] == f["ratio_median"] == f["ratio_max"]
        assert f["target_op"] == (None if target is None else (">=" if unit == "samples/s" else "<="))
    assert "ratio (median)" in res.output  # the table was printed


def test_figure_summary_median_and_spread():
    from prefkit.bench import Figure

    f = Figure("x", [2.0, 3.0, 4.0], [2.0, 2.0, 2.0], 1.1)
    s = f.summary()
    assert s["ratio_median"] == statistics.median([1.0, 1.5, 2.0])
    assert (s["ratio_min"], s["ratio_max"], s["meets_target"]) == (1.0, 2.0, False)
    assert Figure("y", [30.0], [2.0], 10.0, at_least=True).summary()["meets_target"] is True


def test_cli_forwards_size_and_dtype(cli, monkeypatch):
    """The bench command is a thin wrapper: its options reach run_bench as given."""
    import prefkit.bench

    seen = {}

    def fake(*args):
        seen["args"] = args
        return [prefkit.bench.Figure("x", [1.0], [1.0], None)]

    monkeypatch.setattr(prefkit.bench, "run_bench", fake)
    args = ["bench", "generate", "--model", "sd15-random", "--device", "cuda", "--steps", "3"]
    res = cli(
        args
        + ["--batch-size", "2", "--repeats", "1", "--dtype", "float16", "--height", "256", "--width", "128"]
    )
    assert res.exit_code == 0, res.output
    assert seen["args"] == ("generate", "sd15-random", "cuda", 3, 2, 1, "float16", 256, 128)
    assert cli(["bench", "--dtype", "float8"]).exit_code != 0


def test_skipped_figure_is_reported_with_its_reason(capsys):
    from prefkit.bench import Figure, Skipped, print_figures

    skipped = Skipped("train step, --reference stored (x)", "not measured: refused", 1.10)
    assert skipped.summary() == {"figure": skipped.name, "skipped": "not measured: refused", "target": 1.10}
    print_figures([Figure("y", [1.0], [2.0], 1.05), skipped])
    out = capsys.readouterr().out
    assert "not measured: refused" in out and "<= 1.05 ok" in out


@pytest.mark.slow
def test_gpu_bench_dry_run_writes_every_figure_with_its_environment(cli, tmp_path):
    """`prefkit bench gpu --dry-run`: the GPU run's code path on the CPU (tiny models of the same families,
    bfloat16, 1 repeat), so the command documented for a GPU machine cannot rot."""
    from prefkit.bench import DRY_PLAN, GPU_PLAN

    out = tmp_path / "gpu.json"
    res = cli(["bench", "gpu", "--dry-run", "--json", out])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    env = report["environment"]
    assert report["dry_run"] is True and env["device"] == "cpu" and env["torch"] and env["device_name"]
    assert (
        [r["model"] for r in report["runs"]]
        == [p["model"] for p in DRY_PLAN]
        == ["tiny-sd15", "tiny-sd3", "tiny-sdxl"]
    )
    # the same three families
    assert [p["model"] for p in GPU_PLAN] == ["sd15-random", "sd3-medium-random", "sdxl-random"]
    for run in report["runs"]:
        assert run["dtype"] == "bfloat16"
        figures = run["figures"]
        assert len(figures) == 9, [f["figure"] for f in figures]
        for f in figures:
            # a figure is measured with its ratio, or skipped with the reason (the stored reference in bf16)
            assert ("ratio_median" in f and f["ratio_median"] > 0) or "stored" in f.get("skipped", ""), f
        assert sum("ratio_median" in f for f in figures) == 7


def test_gpu_bench_without_cuda_says_what_to_run(cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the real run would start")
    res = cli(["bench", "gpu", "--json", tmp_path / "x.json"])
    assert res.exit_code == 2
    assert "no CUDA device" in res.output + res.stderr and "--dry-run" in res.output + res.stderr
    assert not (tmp_path / "x.json").exists()
