"""Pair formation, the label overlay on disk, and the `prefkit label` stage around any judge."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from prefkit.errors import PrefkitError
from prefkit.label_sets import SampleInfo, pairs_from_scores


def _samples(groups: dict[int, int]) -> dict[str, SampleInfo]:
    out = {}
    for g, n in groups.items():
        for i in range(n):
            key = f"g{g:08d}_s{i:02d}"
            out[key] = SampleInfo(key, g, f"prompt {g}")
    return out


def k(g: int, i: int) -> str:
    return f"g{g:08d}_s{i:02d}"


def test_all_pairs_are_c_n_2_within_each_group_and_never_across():
    samples = _samples({0: 4, 1: 3})
    scores = {key: float(i) for i, key in enumerate(sorted(samples))}
    pairs = pairs_from_scores(scores, samples, "all")
    assert len(pairs) == 6 + 3  # C(4,2) + C(3,2)
    assert all(p.key_0 < p.key_1 for p in pairs)
    assert all(samples[p.key_0].group_id == samples[p.key_1].group_id == p.group_id for p in pairs)
    # higher score wins: key_1 has the higher index, hence the higher score -> label_0 = 0
    assert all(p.label_0 == 0.0 for p in pairs)
    assert pairs[0].judge == {"score_0": 0.0, "score_1": 1.0}


def test_best_worst_and_vs_best_policies():
    samples = _samples({0: 4})
    scores = {k(0, 0): 0.2, k(0, 1): 0.9, k(0, 2): 0.5, k(0, 3): 0.1}
    (bw,) = pairs_from_scores(scores, samples, "best-worst")
    # best = s01 (0.9), worst = s03 (0.1): canonical order (s01, s03), key_0 won
    assert (bw.key_0, bw.key_1, bw.label_0) == (k(0, 1), k(0, 3), 1.0)
    vs = pairs_from_scores(scores, samples, "vs-best")
    assert {(p.key_0, p.key_1, p.label_0) for p in vs} == {
        (k(0, 0), k(0, 1), 0.0),
        (k(0, 1), k(0, 2), 1.0),
        (k(0, 1), k(0, 3), 1.0),
    }


def test_ties_are_kept_with_half_labels():
    samples = _samples({0: 3})
    scores = {k(0, 0): 1.0, k(0, 1): 1.0, k(0, 2): 1.05}
    pairs = pairs_from_scores(scores, samples, "all")
    tie = [p for p in pairs if p.is_tie]
    assert [(p.key_0, p.key_1) for p in tie] == [(k(0, 0), k(0, 1))]
    assert tie[0].record("2026-01-01T00:00:00Z")["label_1"] == 0.5
    # with a margin of 0.1 every pair here is a tie, and all three are still there
    wide = pairs_from_scores(scores, samples, "all", tie_margin=0.1)
    assert len(wide) == 3 and all(p.is_tie for p in wide)


def test_bad_policy_and_margin():
    with pytest.raises(PrefkitError, match="--pairs"):
        pairs_from_scores({}, _samples({0: 2}), "random")
    with pytest.raises(PrefkitError, match="--tie-margin"):
        pairs_from_scores({}, _samples({0: 2}), "all", tie_margin=-1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_models):
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    out = tmp_path_factory.mktemp("labels") / "ds"
    res = CliRunner().invoke(
        app,
        ["generate", "--out", str(out), "--model", tiny_models["sd3"], "--prompt", "a red circle"]
        + ["--prompt", "a blue square", "--samples-per-prompt", "3", "--steps", "2", "--quiet"],
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def scorer_module(tmp_path, monkeypatch):
    """A user's scorer module on sys.path: mean brightness, and one that fails half way."""
    (tmp_path / "my_scorers.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            calls = []
            def brightness(images, prompts):
                return [float(np.asarray(im, dtype=np.float32).mean()) for im in images]
            def flaky(images, prompts):
                calls.append(len(images))
                if len(calls) > 1:
                    raise RuntimeError("judge crashed")
                return [0.0] * len(images)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_scorers"
    sys.modules.pop("my_scorers", None)


def test_label_with_a_custom_scorer_end_to_end(dataset, cli, scorer_module):
    import numpy as np

    from prefkit.label_sets import read_meta, read_pairs
    from prefkit.schemas import validate
    from prefkit.shards import iter_samples

    res = cli(["label", dataset, "--source", f"python:{scorer_module}:brightness", "--name", "bright", "-q"])
    assert res.exit_code == 0, res.output
    pairs = read_pairs(dataset, "bright")
    assert len(pairs) == 2 * 3  # two groups of 3: C(3, 2) each
    for p in pairs:
        validate(p, "label")
    meta = read_meta(dataset, "bright")
    validate(meta, "labelset")
    assert meta["counts"]["scored_samples"] == 6
    # scores are the brightness of the stored PNGs, and the labels follow them
    bright = {
        s["__key__"]: float(np.asarray(s["image"], dtype=np.float32).mean()) for s in iter_samples(dataset)
    }
    scores = [
        json.loads(line) for line in (dataset / "labels" / "bright.scores.jsonl").read_text().splitlines()
    ]
    assert {s["key"]: s["score"] for s in scores} == pytest.approx(bright)
    for p in pairs:
        assert p["label_0"] == (1.0 if bright[p["key_0"]] > bright[p["key_1"]] else 0.0)
        assert p["source"] == "ai"
    # the same name again is refused (nothing overwritten) unless --overwrite
    again = cli(
        ["label", dataset, "--source", f"python:{scorer_module}:brightness", "--name", "bright", "-q"]
    )
    assert again.exit_code == 2 and "exists" in again.output + again.stderr
    res = cli(["label", "stats", dataset])
    assert res.exit_code == 0 and "bright" in res.output


def test_interrupted_label_run_leaves_no_label_file(dataset, cli, scorer_module):
    """The user's scorer crashes on its second batch: the error propagates with its own traceback,
    and no label file (not even a partial one) is left behind."""
    args = [
        "label",
        dataset,
        "--source",
        f"python:{scorer_module}:flaky",
        "--name",
        "flaky",
        "--batch-size",
        "2",
    ]
    with pytest.raises(RuntimeError, match="judge crashed"):
        cli([*args, "-q"])
    assert not list((dataset / "labels").glob("*flaky*"))


def test_label_bad_input(dataset, cli, tmp_path):
    def err(args):
        res = cli(["label", *args])
        assert res.exit_code == 2, res.output
        return res.output + res.stderr

    assert "no such folder" in err([tmp_path / "missing", "--source", "jpeg"])
    assert "--source is required" in err([dataset])
    assert "unknown" in err([dataset, "--source", "nonsense"])
    assert "--input" in err([dataset, "--source", "human"])
    assert "--pairs" in err([dataset, "--source", "jpeg", "--pairs", "some"])
    assert "--name" in err([dataset, "--source", "jpeg", "--name", "../evil"])
    assert not (tmp_path / "missing").exists()
