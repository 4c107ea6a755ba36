"""`prefkit publish --lora` and `prefkit train --push-to-hub`: a trained LoRA as a Hub model repository with a
model card. The uploads go to a fake Hub (tests/hub_server.py: a real HTTP server on 127.0.0.1) through the
real CLI in a fresh process; nothing in huggingface_hub is patched. The training run is made once through
the CLI (tiny SD3, 2 steps) and evaluated by `prefkit eval` with a hostile prompt."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = "pytorch_lora_weights.safetensors"
GRID = "images/eval-grid.png"
SD3 = "stabilityai/stable-diffusion-3-medium-diffusers"
HOSTILE_PROMPT = "<script>alert(1)</script> *bold* [click](https://evil.example) | cell"


def _ok(res):
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def run(labelled_dataset, tmp_path_factory):
    """A training run (2 steps, a checkpoint each step) and its eval report (two prompts, one hostile), made
    through the CLI. Shared read-only: tests that change it make a copy."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    def cli(args):
        return _ok(CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False))

    out = tmp_path_factory.mktemp("lora-run") / "run"
    cli(
        [
            "train",
            labelled_dataset,
            "--out",
            out,
            "--max-steps",
            2,
            "--batch-size",
            1,
            "--checkpoint-every",
            1,
            "-q",
        ]
    )
    cli(
        ["eval", "--lora", out, "--source", "jpeg", "--prompt", HOSTILE_PROMPT, "--prompt", "a red circle"]
        + ["--samples-per-prompt", 1, "-q"]
    )
    return out


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def _body(card: str) -> str:
    return card.split("---\n", 2)[2]


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".publish"))
    return dst


# -- the upload ------------------------------------------------------------------------------------------


def test_lora_repo_has_exactly_the_expected_files(run, tmp_path, hub, hub_cli):
    staging = tmp_path / "s"
    res = hub_cli(
        ["publish", "--lora", run, "--repo-id", "me/tiny-lora", "--staging", staging, "--base-model", SD3]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"published {hub.url}/me/tiny-lora" in res.stdout
    assert list(hub.repos) == [("model", "me/tiny-lora")]  # a model repository, no dataset one
    repo = hub.repo("me/tiny-lora")
    assert repo.private is False
    assert sorted(repo.files) == [".gitattributes", "README.md", GRID, WEIGHTS]
    assert repo.files[WEIGHTS] == (run / "lora" / WEIGHTS).read_bytes()
    assert repo.files[GRID] == (run / "eval" / "grid.png").read_bytes()
    assert repo.files["README.md"] == (staging / "README.md").read_bytes()
    assert [(c["summary"], sorted(c["added"])) for c in repo.commits] == [
        ("prefkit publish", ["README.md", GRID, WEIGHTS])
    ]

    card = repo.files["README.md"].decode()
    fm = _front_matter(card)
    assert fm["base_model"] == SD3
    assert fm["library_name"] == "diffusers" and fm["license"] == "other"
    assert fm["pipeline_tag"] == "text-to-image"
    assert {"lora", "text-to-image", "prefkit", "d3po"} <= set(fm["tags"])
    body = _body(card)
    assert f'base_model = "{SD3}"' in body and 'pipe.load_lora_weights("me/tiny-lora")' in body
    assert f"![base and tuned samples, per prompt a row of base / tuned pairs]({GRID})" in body


def test_card_tells_how_it_was_trained_and_evaluated(run, tmp_path, cli):
    from prefkit.publish import _fmt

    staging = tmp_path / "s"
    _ok(cli(["publish", "--lora", run, "--repo-id", "me/tiny-lora", "--dry-run", "--staging", staging]))
    card = (staging / "README.md").read_text()
    assert "base_model" not in _front_matter(card)  # the tiny model is a local folder, not a Hub id
    body = _body(card)
    summary = json.loads((run / "summary.json").read_text())
    for row in (
        "| objective | d3po |",
        f"| dataset | {Path(summary['dataset']).name} |",
        "| label set(s) | jpeg |",
        "| optimizer steps | 2 |",
        "| learning rate / schedule | 3e-05 / constant |",
        "| beta | 0.1 |",
        "| LoRA rank / alpha | 4 / 4.0 |",
        f"| loss | {_fmt(summary['recent']['loss'])} |",
        f"| accuracy | {_fmt(summary['recent']['accuracy'])} |",
    ):
        assert row in body, row
    assert "over the last 2 optimizer steps (steps 1-2)" in body
    report = json.loads((run / "eval" / "report.json").read_text())
    s = report["summary"]
    assert f"win rate **{s['win_rate']['value']:.3f}**" in body
    assert f"| wins / ties / losses | {s['wins']} / {s['ties']} / {s['losses']} |" in body
    assert "| judge | jpeg |" in body and "Prompts (2):" in body
    # no local path of the run reaches the card
    assert str(run.parent) not in card and str(tmp_path) not in card


def test_forms_of_lora_and_a_checkpoint(run, tmp_path, cli):
    """OUT, OUT/lora and OUT/checkpoint-N: the same run; a checkpoint's card has its own step and metrics
    window, and no eval of the final LoRA."""
    cards = {}
    for name, spec in (("out", run), ("lora", run / "lora"), ("ckpt", run / "checkpoint-1")):
        staging = tmp_path / name
        _ok(cli(["publish", "--lora", spec, "--repo-id", "me/x", "--dry-run", "--staging", staging, "-q"]))
        cards[name] = (staging / "README.md").read_text()
        weights = run / ("checkpoint-1" if name == "ckpt" else "lora") / WEIGHTS
        assert (staging / WEIGHTS).read_bytes() == weights.read_bytes()
    assert cards["out"] == cards["lora"]
    ckpt = _body(cards["ckpt"])
    assert "| optimizer steps | 1 (checkpoint of a run of 2) |" in ckpt
    assert "over the last 1 optimizer steps (steps 1-1)" in ckpt
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    from prefkit.publish import _fmt

    assert f"| loss | {_fmt(first['loss'])} |" in ckpt
    assert "## Evaluation" not in ckpt and not (tmp_path / "ckpt" / "images").exists()


def test_a_lora_without_its_training_run(run, tmp_path, cli):
    """A LoRA folder from elsewhere (no config.yaml beside it): published with a card that says so, and the
    base model from --base-model."""
    folder = tmp_path / "lora"
    folder.mkdir()
    shutil.copy(run / "lora" / WEIGHTS, folder / WEIGHTS)
    staging = tmp_path / "s"
    args = ["publish", "--lora", folder, "--repo-id", "me/x", "--dry-run", "--staging", staging]
    res = _ok(cli(args))
    assert "no training run found" in res.stderr and "base model is unknown" in res.stderr
    assert sorted(p.name for p in staging.iterdir()) == [".prefkit-publish", "README.md", WEIGHTS]
    card = (staging / "README.md").read_text()
    assert "No prefkit training run was found beside it" in card and "## Training" not in card
    _ok(cli([*args, "--base-model", SD3]))
    assert _front_matter((staging / "README.md").read_text())["base_model"] == SD3


def test_republish_sends_nothing_unchanged_and_removes_a_stale_grid(run, tmp_path, hub, hub_cli):
    folder = _copy(run, tmp_path / "run")
    args = ["publish", "--lora", folder, "--repo-id", "me/tiny-lora", "-q"]
    assert hub_cli(args).returncode == 0
    repo = hub.repo("me/tiny-lora")
    assert (folder / ".publish" / "README.md").is_file()  # the default staging: OUT/.publish
    res = hub_cli(args)
    assert res.returncode == 0, res.stderr
    assert len(repo.commits) == 1  # nothing changed: no commit, nothing sent
    shutil.rmtree(folder / "eval")
    res = hub_cli(args)
    assert res.returncode == 0, res.stderr
    assert repo.commits[1]["added"] == ["README.md"] and repo.commits[1]["deleted"] == [GRID]
    assert sorted(repo.files) == [".gitattributes", "README.md", WEIGHTS]


def test_dry_run_makes_no_request(run, tmp_path, hub, hub_cli):
    res = hub_cli(["publish", "--lora", run, "--repo-id", "me/tiny-lora", "--dry-run", "--staging", tmp_path])
    assert res.returncode == 0, res.stderr
    assert "would upload" in res.stdout and WEIGHTS in res.stdout and "(model)" in res.stdout
    assert "is not a Hub id" in res.stderr and "--base-model" in res.stderr  # the card has no base_model
    assert hub.requests == [] and hub.repos == {}


def test_offline_is_refused_before_anything_is_built(run, tmp_path, hub, hub_cli):
    staging = tmp_path / "s"
    res = hub_cli(
        ["publish", "--lora", run, "--repo-id", "me/tiny-lora", "--staging", staging], HF_HUB_OFFLINE="1"
    )
    assert res.returncode == 2
    assert "HF_HUB_OFFLINE" in res.stderr and "--dry-run" in res.stderr and "Traceback" not in res.stderr
    assert hub.requests == [] and not staging.exists()


# -- refusals --------------------------------------------------------------------------------------------


def _error(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    return " ".join(res.stderr.split())


def test_refuses_a_folder_without_a_lora_and_mixed_settings(run, tmp_path, cli, labelled_dataset):
    base = ["--repo-id", "me/x", "--dry-run", "--staging", tmp_path / "s"]
    (tmp_path / "empty").mkdir()
    assert f"no {WEIGHTS} in that folder" in _error(cli(["publish", "--lora", tmp_path / "empty", *base]))
    assert "no such folder" in _error(cli(["publish", "--lora", tmp_path / "absent", *base]))
    assert "not both" in _error(cli(["publish", labelled_dataset, "--lora", run, *base]))
    assert "--labels: a dataset's setting" in _error(
        cli(["publish", "--lora", run, "--labels", "jpeg", *base])
    )
    err = _error(cli(["publish", "--lora", run, "--base-model", "/models/sd3", *base]))
    assert "--base-model '/models/sd3': expected the base model's Hub id OWNER/NAME" in err
    assert "goes with --lora" in _error(cli(["publish", labelled_dataset, "--base-model", SD3, *base]))
    assert "--repo-id is required" in _error(cli(["publish", "--lora", run, "--dry-run"]))
    assert "give the dataset folder" in _error(cli(["publish", "--repo-id", "me/x", "--dry-run"]))
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "target", ["lora/" + WEIGHTS, "lora", "config.yaml", "summary.json", "eval/grid.png"]
)
def test_refuses_a_symlink_out_of_the_run(run, tmp_path, cli, target):
    folder = _copy(run, tmp_path / "run")
    secret = tmp_path / "secret"
    shutil.move(folder / target, secret)  # the same content: only the link gives it away
    (folder / target).symlink_to(secret)
    staging = tmp_path / "s"
    err = _error(cli(["publish", "--lora", folder, "--repo-id", "me/x", "--dry-run", "--staging", staging]))
    kind = "LoRA folder" if target.endswith(WEIGHTS) else "training run folder"
    assert f"a symbolic link; publish stages only the {kind}'s own files" in err
    assert not staging.exists()


# -- the card escapes what the run's files say -------------------------------------------------------------

HOSTILE_MODEL = "<img src=x onerror=alert(1)>/[m](javascript:alert(2))"


def test_card_escapes_hostile_strings(run, tmp_path, cli):
    folder = _copy(run, tmp_path / "run")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["model"] = HOSTILE_MODEL  # what the card names as the base model
    config["dataset"] = "`code` <b>data</b> | x"
    config["objective"] = "<i>d3po</i>"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    os.utime(folder / "eval" / "report.json")  # still newer than the LoRA
    staging = tmp_path / "s"
    _ok(cli(["publish", "--lora", folder, "--repo-id", "me/x", "--dry-run", "--staging", staging]))
    card = (staging / "README.md").read_text()
    fm = _front_matter(card)
    assert "base_model" not in fm and "<i>d3po</i>" not in fm["tags"]
    body = _body(card)
    for raw in ("<img", "<script", "<b>", "<i>", "m](javascript", "click](", "`code`"):
        assert raw not in card, raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt; \\*bold\\* \\[click\\](https://evil.example) \\| cell" in body
    )
    # every table row keeps its columns: nothing user-controlled broke a table
    for line in body.splitlines():
        if line.startswith("| "):
            assert line.replace("\\|", "").count("|") == 3, line


def test_a_stale_eval_report_is_left_out(run, tmp_path, cli):
    folder = _copy(run, tmp_path / "run")
    later = (folder / "eval" / "report.json").stat().st_mtime + 10
    os.utime(folder / "lora" / WEIGHTS, (later, later))  # trained further after the eval
    staging = tmp_path / "s"
    res = _ok(cli(["publish", "--lora", folder, "--repo-id", "me/x", "--dry-run", "--staging", staging]))
    assert "older than the LoRA" in res.stderr
    assert "## Evaluation" not in (staging / "README.md").read_text()
    assert not (staging / "images").exists()


# -- prefkit train --push-to-hub ------------------------------------------------------------------------


def test_train_push_to_hub(labelled_dataset, tmp_path, hub, hub_cli):
    """The real command in a fresh process: trains, then the main process publishes OUT as `prefkit publish
    --lora OUT` does."""
    out = tmp_path / "run"
    args = ["train", labelled_dataset, "--out", out, "--max-steps", 1, "--batch-size", 1]
    res = hub_cli([*args, "--push-to-hub", "me/pushed", "-q"], OMP_NUM_THREADS="1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"published {hub.url}/me/pushed" in res.stdout
    repo = hub.repo("me/pushed")
    assert sorted(repo.files) == [".gitattributes", "README.md", WEIGHTS]
    assert repo.files[WEIGHTS] == (out / "lora" / WEIGHTS).read_bytes()
    card = repo.files["README.md"].decode()
    assert "d3po" in _front_matter(card)["tags"] and "| optimizer steps | 1 |" in card
    assert yaml.safe_load((out / "config.yaml").read_text())["push-to-hub"] == "me/pushed"


def test_train_push_to_hub_refused_before_training(labelled_dataset, tmp_path, hub, hub_cli, cli):
    out = tmp_path / "run"
    args = ["train", labelled_dataset, "--out", out, "--max-steps", 1]
    res = hub_cli([*args, "--push-to-hub", "me/pushed"], HF_HUB_OFFLINE="1")
    assert res.returncode == 2, res.stderr
    assert "HF_HUB_OFFLINE" in res.stderr and "leave out --push-to-hub" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists() and hub.requests == []
    err = _error(cli([*args, "--push-to-hub", "not a repo"]))
    assert "--push-to-hub 'not a repo': expected a Hub model repository OWNER/NAME" in err
    assert not out.exists()


def test_card_of_files_with_unexpected_types():
    """A run's files edited by hand (lists where strings were, strings where numbers were): a card, no crash,
    and nothing but numbers in the code."""
    from prefkit.publish import render_model_card

    train = {"objective": ["d3po"], "model": {"x": 1}, "lr": "<b>", "dataset": 3}
    manifest = {"settings": {"steps": "2; import os", "guidance": [5]}, "model": "m"}
    report = {"summary": {"win_rate": {"value": "0.9"}}, "prompts": "<script>", "judge": []}
    card = render_model_card(
        "me/x", None, train["model"], train, {}, manifest, {}, "2", None, report, False, "other"
    )
    assert "<b>" not in card and "<script>" not in card
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert "import os" not in code and "[5]" not in code and "num_inference_steps" not in code
    assert "tags" in _front_matter(card)
