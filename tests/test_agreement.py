"""Cohen's kappa against hand-worked numbers, and `prefkit label agreement` end to end on hand-made label
sets of one dataset: a judge that agrees with the humans on one prompt and contradicts them on the other."""

from __future__ import annotations

import pytest
from conftest import two_prompt_dataset

from prefkit.errors import PrefkitError
from prefkit.math.stats import cohen_kappa


def test_cohen_kappa_hand_worked():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 (the classic worked example)
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    k = cohen_kappa(a, b)
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4
    assert k["observed"] == pytest.approx(0.7) and k["expected"] == pytest.approx(0.5)
    assert k["kappa"] == pytest.approx(0.4)
    # SE = sqrt(0.7 * 0.3 / 50) / 0.5 = 0.1296148; 0.4 -+ 1.959964 * SE
    assert k["low"] == pytest.approx(0.145960, abs=1e-6) and k["high"] == pytest.approx(0.654040, abs=1e-6)
    assert cohen_kappa(["x"] * 4, ["x"] * 4)["kappa"] is None  # chance agreement 1: undefined
    assert cohen_kappa(["0", "1", "tie"], ["0", "1", "tie"])["kappa"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cohen_kappa(["0"], [])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_models):
    return two_prompt_dataset(tmp_path_factory.mktemp("agreement") / "ds", tiny_models["sd3"])


def _scored_set(folder, name, values):
    from prefkit.label_sets import dataset_samples, pairs_from_scores, write_label_set

    samples = dataset_samples(folder)
    scores = {key: values[info.group_id][int(key[-2:])] for key, info in samples.items()}
    pairs = pairs_from_scores(scores, samples, "all", 0.0, source="ai", judge={"name": name})
    meta = {"source": name, "kind": "ai", "pairs_policy": "all", "tie_margin": 0.0}
    write_label_set(folder, name, pairs, meta, scores=scores, samples=samples)


def test_label_agreement_end_to_end(dataset, cli):
    from PIL import Image

    from prefkit.agreement import agreement

    # the judge prefers the later sample in both groups; the "humans" agree in group 0, disagree in group 1
    _scored_set(dataset, "judge", {0: [1.0, 1.001, 3.0], 1: [2.0, 2.5, 5.0]})
    _scored_set(dataset, "people", {0: [1.0, 2.0, 3.0], 1: [5.0, 2.5, 2.0]})
    report = agreement(dataset, "judge", "people")
    assert report["common_pairs"] == report["decided_by_both"] == 6  # C(3, 2) per group
    assert report["accuracy"]["agree"] == 3 and report["accuracy"]["value"] == 0.5
    assert report["coverage"] == 1.0
    # the judge says "second won" for all 6, the people 3 x "second", 3 x "first": p_o = p_e = 0.5
    assert report["kappa"]["kappa"] == pytest.approx(0.0)
    (row,) = report["by_judge_gap"]  # under 8 pairs: one bin, gaps 0.001 .. 3
    assert (row["gap_low"], row["gap_high"], row["pairs"]) == (pytest.approx(0.001), 3.0, 6)
    assert report["best_tie_margin"]["kappa"] >= report["kappa"]["kappa"]
    assert Image.open(report["plot"]).size == (480, 260)
    res = cli(["label", "agreement", str(dataset), "--judge", "judge", "--against", "people"])
    assert res.exit_code == 0, res.output
    assert "accuracy 50.0%" in res.output and "Cohen's kappa 0.000" in res.output
    res = cli(["label", "agreement", str(dataset), "--judge", "judge"])
    assert res.exit_code == 2 and "usage: prefkit label agreement" in res.output + res.stderr
    with pytest.raises(PrefkitError, match="same label set"):
        agreement(dataset, "judge", "judge")
