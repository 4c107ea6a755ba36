"""The README's loop, smaller: generate on the built-in tiny-shapes model -> label with the shapes judge
-> train (d3po) -> eval on held-out captions. The tuned model must win more often than it loses against
its base model, with a 95 % interval that excludes 50 %."""

from __future__ import annotations

import json

from prefkit.schemas import validate


def test_generate_label_train_eval_on_the_builtin_model(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's relative paths
    steps = ["--steps", "10"]

    def ok(args):
        result = cli([str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    ok(["generate", "--out", "data", "--prompts", "shapes", "--samples-per-prompt", 6, *steps, "--quiet"])
    ok(["label", "data", "--source", "shapes", "--quiet"])
    ok(
        [
            "train",
            "data",
            "--out",
            "run",
            "--objective",
            "d3po",
            "--max-steps",
            40,
            "--batch-size",
            8,
            "--lr",
            "3e-3",
            "--quiet",
        ]
    )
    # --source and --prompts default to the training pairs' judge and the held-out shapes captions
    ok(["eval", "--lora", "run/lora", "--samples", 6, "--quiet"])

    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    validate(report, "eval")
    assert report["judge"]["source"] == "shapes"
    assert all(
        p not in report["prompts"]
        for p in json.loads((tmp_path / "data" / "manifest.json").read_text())["prompts"]
    )
    rate = report["summary"]["win_rate"]
    print("win rate", rate, "scores", report["summary"]["scores"])
    assert rate["value"] > 0.5 and rate["low"] > 0.5, rate
    assert (tmp_path / "run" / "eval" / "grid.png").is_file()
