"""Pair formation, the label overlay on disk, and the `prefkit label` stage around any judge."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from conftest import two_prompt_dataset

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
    return two_prompt_dataset(tmp_path_factory.mktemp("labels") / "ds", tiny_models["sd3"])


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


# -- score gaps ------------------------------------------------------------------------------------------


def test_gap_summary_of_known_gaps():
    import numpy as np

    from prefkit.math.stats import gap_summary, quantile, suggested_tie_margin

    gaps = [0.0, 0.01, 0.03, 0.1, 0.5, 1.0, 2.0, 4.0, 5.0, 10.0]
    scores = [float(i) for i in range(9)]  # IQR 6 - 2 = 4: the suggested margin is 1% of it
    s = gap_summary(gaps, scores, used=0.0)
    expected = {"min": 0.0, "10%": 0.009, "25%": 0.0475, "50%": 0.75, "75%": 3.5, "90%": 5.5, "max": 10.0}
    assert s["quantiles"] == pytest.approx(expected)
    assert list(s["quantiles"].values()) == pytest.approx(
        np.percentile(gaps, [0, 10, 25, 50, 75, 90, 100]).tolist()
    )
    assert s["pairs"] == 10 and s["scores_iqr"] == 4.0 and s["suggested"] == 0.04 and s["used"] == 0.0
    # candidates: 0, 0.1x, 1x, 5x, 10x the suggestion; a gap equal to the margin is a tie (<=)
    assert [(w["margin"], w["pairs"], w["suggested"]) for w in s["within"]] == [
        (0.0, 1, False),
        (0.004, 1, False),
        (0.04, 3, True),
        (0.2, 4, False),
        (0.4, 4, False),
    ]
    assert s["within"][2]["share"] == 0.3
    # the margin used joins the candidates; without a margin (a pairwise judge) nothing is suggested
    assert 0.03 in [w["margin"] for w in gap_summary(gaps, scores, used=0.03)["within"]]
    assert gap_summary(gaps, scores, used=None, suggest=False)["suggested"] is None
    # the rule: 2 significant digits; the range when the IQR is 0; 0 for equal scores
    assert suggested_tie_margin([0.98954, 0.98995, 0.5, 0.7, 0.91]) == pytest.approx(0.0029)
    assert suggested_tie_margin([1.0, 1.0, 1.0, 1.0, 3.0]) == 0.02
    assert suggested_tie_margin([2.0, 2.0]) == 0.0 and suggested_tie_margin([]) == 0.0
    assert quantile([3.0], 0.9) == 3.0
    with pytest.raises(ValueError):
        gap_summary([], scores)


def _handmade_set(folder, name="handmade"):
    """A scored label set with known gaps: group 0 scores 1, 1.001, 3; group 1 scores 2, 2, 5."""
    from prefkit.label_sets import dataset_samples, write_label_set

    samples = dataset_samples(folder)
    values = {0: [1.0, 1.001, 3.0], 1: [2.0, 2.0, 5.0]}
    scores = {key: values[info.group_id][int(key[-2:])] for key, info in samples.items()}
    pairs = pairs_from_scores(scores, samples, "all", 0.0, source="ai", judge={"name": "handmade"})
    meta = {"source": "handmade", "kind": "ai", "pairs_policy": "all", "tie_margin": 0.0}
    write_label_set(folder, name, pairs, meta, scores=scores, samples=samples)


def test_label_stats_shows_the_spread_of_score_gaps(dataset, cli, tmp_path):
    import shutil

    from PIL import Image

    from prefkit.label import print_stats
    from prefkit.label_sets import Pair, dataset_samples, write_label_set

    folder = tmp_path / "ds"
    shutil.copytree(dataset, folder)
    shutil.rmtree(folder / "labels", ignore_errors=True)
    _handmade_set(folder)
    # a pairwise judge's set: scores belong to pairs, no --tie-margin applies
    samples = dataset_samples(folder)
    a, b = sorted(k for k, s in samples.items() if s.group_id == 0)[:2]
    duel = [Pair(a, b, 0, samples[a].prompt, 1.0, "ai", judge={"score_0": 0.7, "score_1": 0.3})]
    write_label_set(folder, "duel", duel, {"source": "duel", "kind": "ai", "tie_margin": None})

    res = cli(["label", "stats", folder])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "score gaps" in out and "suggested --tie-margin" in out
    # gaps 0, 0.001, 1.999, 2, 3, 3; scores' IQR 2.75 - 1.25075 -> 1% = 0.015 (2 digits)
    assert "handmade: pairs with a gap <= 0: 1 (16.7%, used), <= 0.0015: 2 (33.3%)" in out
    assert "<= 0.015: 2 (33.3%, suggested)" in out
    png = folder / "labels" / "handmade.gaps.png"
    assert f"histogram {png}" in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (480, 240)
    rows = {r["name"]: r for r in print_stats(folder)}
    g = rows["handmade"]["gaps"]
    assert g["quantiles"] == pytest.approx(
        {"min": 0.0, "10%": 0.0005, "25%": 0.5005, "50%": 1.9995, "75%": 2.75, "90%": 3.0, "max": 3.0}
    )
    assert g["suggested"] == 0.015 and g["used"] == 0.0 and g["pairs"] == 6
    assert rows["duel"]["gaps"]["suggested"] is None and rows["duel"]["gaps"]["quantiles"][
        "max"
    ] == pytest.approx(0.4)
    assert (folder / "labels" / "duel.gaps.png").is_file()
    # writing the set again removes its old histogram; a set without scores has none
    _handmade_set(folder)
    assert not png.exists()
    write_label_set(folder, "plain", [Pair(a, b, 0, "p", 1.0, "human")], {"source": "human", "kind": "human"})
    assert rows.get("plain") is None and {r["name"]: r for r in print_stats(folder)}["plain"]["gaps"] is None


def test_label_with_a_scorer_ends_with_the_gap_summary(dataset, cli, scorer_module, tmp_path):
    import shutil

    folder = tmp_path / "ds"
    shutil.copytree(dataset, folder)
    res = cli(["label", folder, "--source", f"python:{scorer_module}:brightness", "--name", "lit"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "score gaps of 'lit' (6 pairs): min " in out and ", 50% " in out and ", max " in out
    assert "suggested --tie-margin" in out and "--tie-margin 0 used: " in out
    quiet = cli(["label", folder, "--source", f"python:{scorer_module}:brightness", "--name", "q", "-q"])
    assert quiet.exit_code == 0 and "score gaps" not in quiet.output
