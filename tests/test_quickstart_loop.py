"""The README's loop on the built-in model, through the real CLI: generate on tiny-shapes without
classifier-free guidance -> label with the shapes judge -> train (d3po with DPOK's KL) -> eval on the
held-out captions with eval's defaults (the training judge, the held-out captions, the training run's
sampler settings) plus 16 seeds and a tie margin of 0.02.

It asserts that the stages chain and that the tuned model beats the base on captions it never saw: a win
rate above 0.5 whose 95 % interval (the sign test's, prefkit.stats) excludes 0.5. This is the README's
run on generate's default seed: deterministic on this CPU (1 and 2 threads gave the same counts), and
measured at 20 wins / 3 losses of 256. It is one draw of the training data, not a law: on four data
seeds the README's recipe won significantly on three and tied on one, and without the KL term it also
lost on one (README, "How reliable is it"). If this fails after a library upgrade with unchanged code,
re-measure across seeds before concluding that training broke."""

from __future__ import annotations

import json

from prefkit.schemas import validate

D3PO = ["--batch-size", 8, "--timestep-fraction", 0.5, "--kl-coef", 0.1, "-q"]  # the README's d3po run


def test_generate_label_train_eval_on_the_builtin_model(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's relative paths

    def ok(args):
        result = cli([str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    ok(["generate", "--out", "data", "--prompts", "shapes", "--samples-per-prompt", 8, "--guidance", 1, "-q"])
    ok(["label", "data", "--source", "shapes", "--tie-margin", 0.01, "--quiet"])
    ok(["train", "data", "--out", "run", "--objective", "d3po", "--max-steps", 120, "--lr", "1e-3"] + D3PO)
    ok(["eval", "--lora", "run/lora", "--samples", 16, "--tie-margin", 0.02, "--no-kl", "--quiet"])

    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["settings"]["model"] == "tiny-shapes"
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    validate(report, "eval")
    assert report["judge"]["source"] == "shapes" and report["judge"]["tie_margin"] == 0.02  # the flag wins
    from prefkit.prompts import resolve_prompts

    assert report["prompts"] == resolve_prompts(None, "shapes-heldout")
    assert not set(report["prompts"]) & set(manifest["prompts"])
    assert report["settings"]["guidance"] == 1.0 and report["settings"]["steps"] == 20  # the training data's
    s = report["summary"]
    assert s["pairs"] == 16 * len(report["prompts"]) == s["wins"] + s["ties"] + s["losses"]
    summary = f"{s['wins']} wins, {s['ties']} ties, {s['losses']} losses: {s['win_rate']}; {s['scores']}"
    assert s["win_rate"]["value"] > 0.5 and s["win_rate"]["low"] > 0.5, summary
    assert s["win_rate"]["decisive"]["low"] > 0.5, summary
    assert s["drift"]["latent_rms"]["mean"] > 0  # the trained LoRA changed the samples
    assert (tmp_path / "run" / "eval" / "grid.png").is_file()
