"""Human label import (prefkit.importers) into label sets, agreement statistics, and bad input.

One small dataset (2 prompts x 3 samples) is generated once for the module through the real CLI. Every
format gets a hand-written input with several annotators, a tie and a disagreement; the label set it
becomes must validate and carry the hand-computed soft labels, the votes and the agreement.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from prefkit.errors import PrefkitError
from prefkit.importers import detect_format, import_d3po, import_human, read_votes
from prefkit.label_sets import (
    Pair,
    Vote,
    check_votes,
    dataset_samples,
    krippendorff_alpha_nominal,
    label_paths,
    pair_agreement,
    pairs_from_votes,
    percent_agreement,
    read_meta,
    read_pairs,
    write_label_set,
)
from prefkit.schemas import validate

A0, A1, A2 = "g00000000_s00", "g00000000_s01", "g00000000_s02"  # "a red circle"
B0, B1, B2 = "g00000001_s00", "g00000001_s01", "g00000001_s02"  # "a blue square"


@pytest.fixture(scope="module")
def dataset(tiny_models, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    folder = tmp_path_factory.mktemp("importers") / "ds"
    args = ["generate", "--out", str(folder), "--model", tiny_models["sd3"], "--prompt", "a red circle"]
    args += ["--prompt", "a blue square", "--samples-per-prompt", "3", "--steps", "2", "--quiet"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def samples(dataset):
    s = dataset_samples(dataset)
    assert sorted(s) == [A0, A1, A2, B0, B1, B2]
    assert {k: (v.group_id, v.prompt) for k, v in s.items()}[B1] == (1, "a blue square")
    return s


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _write_set(dataset, samples, name, fmt, inputs, votes=None, pairs=None) -> dict[str, dict]:
    """Import ``inputs`` as `prefkit label --source human --format FMT` does (run_label, which reads, checks
    and aggregates through importers.import_human, then writes the set), read the set back validated:
    pair_id -> record. It must hold the aggregate of ``votes`` (as the test read them), or ``pairs``."""
    from prefkit.config import LabelConfig
    from prefkit.label import run_label

    cfg = LabelConfig(
        dataset=str(dataset),
        source="human",
        format=fmt,
        input=[str(p) for p in inputs],
        name=name,
        quiet=True,
    )
    meta = run_label(cfg)
    assert meta.get("report", {}).get("contradictions", []) == []
    if pairs is None:
        pairs = pairs_from_votes(votes, samples)
        assert meta["counts"]["votes"] == len(votes)
    assert read_meta(dataset, name) == meta
    assert meta["format"] == fmt and meta["counts"]["pairs"] == len(pairs)
    assert meta["inputs"] == [str(p) for p in inputs]
    records = read_pairs(dataset, name)
    assert {r["pair_id"]: r["label_0"] for r in records} == {p.pair_id: p.label_0 for p in pairs}
    for i, rec in enumerate(records):
        validate(rec, "label", f"record {i}")  # also validated on write; read back the same
        assert rec["key_0"] < rec["key_1"] and rec["pair_id"] == f"{rec['key_0']}__{rec['key_1']}"
        assert rec["label_1"] == pytest.approx(1 - rec["label_0"])
        assert rec["source"] == "human"
        assert rec["caption"] == samples[rec["key_0"]].prompt
    return {r["pair_id"]: r for r in records}


def _choices(rec) -> dict[str, str]:
    return {v["annotator"]: v["choice"] for v in rec["votes"]}


# -- each format ----------------------------------------------------------------------------------------


def test_prefkit_jsonl_votes_and_pair_records(dataset, samples, tmp_path):
    path = _jsonl(
        tmp_path / "votes.jsonl",
        [
            {"key_0": A0, "key_1": A1, "choice": "0", "annotator": "ann", "lead_time_s": 2.5,
             "created_at": "2025-01-01T00:00:00Z"},
            {"key_0": A1, "key_1": A0, "choice": "1", "annotator": "bob"},  # swapped: also A0 wins
            {"key_0": A0, "key_1": A1, "choice": "1", "annotator": "cy"},  # the disagreement
            {"key_0": A0, "key_1": A2, "choice": "tie", "annotator": "ann"},
            "",
            # a pair record as prefkit writes it, with its votes
            {"pair_id": f"{B0}__{B1}", "key_0": B0, "key_1": B1, "label_0": 0.0, "label_1": 1.0,
             "votes": [{"annotator": "ann", "choice": "1", "lead_time_s": None, "created_at": None},
                       {"annotator": "bob", "choice": "1", "lead_time_s": 1.0, "created_at": None}]},
            # a record without votes: its label_0 is one vote
            {"key_0": B1, "key_1": B2, "label_0": 1.0, "label_1": 0.0, "votes": []},
            {"key_0": B0, "key_1": B2, "label_0": 0.5, "label_1": 0.5, "has_label": False, "votes": []},
        ],
    )  # fmt: skip
    assert detect_format(path) == "prefkit"
    votes, counts = read_votes([path], "prefkit", samples)
    assert counts == {"skipped": 1, "cancelled": 0}
    assert len(votes) == 7
    assert votes[0].where == f"{path}:1" and votes[4].where.startswith(f"{path}:6")
    recs = _write_set(dataset, samples, "human-prefkit", "prefkit", [path], votes)
    assert set(recs) == {f"{A0}__{A1}", f"{A0}__{A2}", f"{B0}__{B1}", f"{B1}__{B2}"}
    r = recs[f"{A0}__{A1}"]
    assert r["label_0"] == pytest.approx(2 / 3, abs=1e-6) and not r["is_tie"]
    assert _choices(r) == {"ann": "0", "bob": "0", "cy": "1"}
    assert r["votes"][0] == {
        "annotator": "ann", "choice": "0", "lead_time_s": 2.5, "created_at": "2025-01-01T00:00:00Z"
    }  # fmt: skip
    assert r["agreement"] == pytest.approx(1 / 3)
    tie = recs[f"{A0}__{A2}"]
    assert tie["label_0"] == 0.5 and tie["label_1"] == 0.5 and tie["is_tie"] and tie["agreement"] is None
    assert recs[f"{B0}__{B1}"]["label_0"] == 0.0 and recs[f"{B0}__{B1}"]["agreement"] == 1.0
    assert recs[f"{B1}__{B2}"]["label_0"] == 1.0 and _choices(recs[f"{B1}__{B2}"]) == {"anonymous": "0"}
    meta = read_meta(dataset, "human-prefkit")
    assert meta["counts"] == {
        "pairs": 4, "ties": 1, "decided": 3, "unlabelled": 0, "votes": 7, "scored_samples": None
    }  # fmt: skip
    assert meta["agreement"]["items_with_2plus_votes"] == 2
    assert meta["agreement"]["annotators"] == 4  # ann, bob, cy, anonymous
    # vote pairs: A0/A1 3 (1 agrees), B0/B1 1 (agrees)
    assert meta["agreement"]["percent_agreement"] == pytest.approx(2 / 4)


PICKAPIC_RECORDS = [
    {"caption": "a red circle", "key_0": A0, "key_1": A1, "label_0": 1, "label_1": 0, "user_id": 7,
     "has_label": True, "created_at": "2024-05-01 10:00:00"},
    {"caption": "a red circle", "key_0": A0, "key_1": A1, "label_0": 1, "label_1": 0, "user_id": 8,
     "has_label": True},
    {"caption": "a red circle", "key_0": A1, "key_1": A0, "label_0": 1, "label_1": 0, "user_id": 9,
     "has_label": True},  # swapped keys: user 9 prefers A1
    {"caption": "a red circle", "key_0": A1, "key_1": A2, "label_0": 0.5, "label_1": 0.5, "user_id": 7,
     "has_label": True},
    {"caption": "a blue square", "image_0_uid": B2, "image_1_uid": B0, "label_0": 0, "label_1": 1,
     "user_id": 7, "has_label": True},
    {"caption": "a blue square", "key_0": B1, "key_1": B2, "label_0": None, "label_1": None,
     "user_id": 8, "has_label": False},
]  # fmt: skip


@pytest.mark.parametrize("container", ["jsonl", "json", "parquet"])
def test_pickapic_records(dataset, samples, tmp_path, container):
    if container == "jsonl":
        path = _jsonl(tmp_path / "pickapic.jsonl", PICKAPIC_RECORDS)
    elif container == "json":
        path = tmp_path / "pickapic.json"
        path.write_text(json.dumps(PICKAPIC_RECORDS, indent=1))
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        rows = [
            {
                "caption": r["caption"],
                "jpg_0": b"\xff\xd8not-a-real-jpeg",
                "jpg_1": b"\xff\xd8not-a-real-jpeg",
                "image_0_uid": r.get("key_0", r.get("image_0_uid")),
                "image_1_uid": r.get("key_1", r.get("image_1_uid")),
                "label_0": None if r["label_0"] is None else float(r["label_0"]),
                "label_1": None if r["label_1"] is None else float(r["label_1"]),
                "user_id": r["user_id"],
                "has_label": r["has_label"],
            }
            for r in PICKAPIC_RECORDS
        ]
        path = tmp_path / "train-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    assert detect_format(path) == "pickapic"
    votes, counts = read_votes([path], "auto", samples)
    assert counts == {"skipped": 1, "cancelled": 0} and len(votes) == 5
    where = {"jsonl": f"{path}:3", "json": f"{path}, record 3", "parquet": f"{path}, row 3"}[container]
    assert votes[2].where == where
    recs = _write_set(dataset, samples, f"human-pickapic-{container}", "pickapic", [path], votes)
    r = recs[f"{A0}__{A1}"]
    assert r["label_0"] == pytest.approx(2 / 3, abs=1e-6)
    assert _choices(r) == {"7": "0", "8": "0", "9": "1"}
    tie = recs[f"{A1}__{A2}"]
    assert tie["is_tie"] and tie["label_0"] == 0.5 and _choices(tie) == {"7": "tie"}
    assert recs[f"{B0}__{B2}"]["label_0"] == 1.0  # B2-vs-B0 with label_1 = 1: B0 won
    assert f"{B1}__{B2}" not in recs  # has_label false: skipped


def test_d3po_score_files_are_averaged(dataset, samples, tmp_path):
    scores = {
        "alice": [[1, 0, 1], [0, 1, 1]],
        "bob": [[1, 1, 0], [0, 1, 0]],
        "carol": [[0, 0, 1], [1, 1, 0]],
    }
    paths = []
    for name, lists in scores.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(lists))
    assert {detect_format(p) for p in paths} == {"d3po"}
    pairs = import_d3po(paths, samples, policy="all", tie_margin=0.0)
    recs = _write_set(dataset, samples, "human-d3po", "d3po", paths, pairs=pairs)
    # means: group 0 = 2/3, 1/3, 2/3; group 1 = 1/3, 1, 1/3; all C(3,2) pairs, ties kept
    expected = {
        (A0, A1): (1.0, {"alice": "0", "bob": "tie", "carol": "tie"}, 1 / 3),
        (A0, A2): (0.5, {"alice": "tie", "bob": "0", "carol": "1"}, 0.0),
        (A1, A2): (0.0, {"alice": "1", "bob": "0", "carol": "1"}, 1 / 3),
        (B0, B1): (0.0, {"alice": "1", "bob": "1", "carol": "tie"}, 1 / 3),
        (B0, B2): (0.5, {"alice": "1", "bob": "tie", "carol": "0"}, 0.0),
        (B1, B2): (1.0, {"alice": "tie", "bob": "0", "carol": "0"}, 1 / 3),
    }
    assert set(recs) == {f"{a}__{b}" for a, b in expected}
    for (a, b), (label, choices, agreement) in expected.items():
        r = recs[f"{a}__{b}"]
        assert r["label_0"] == label, (a, b)
        assert r["is_tie"] == (label == 0.5)
        assert _choices(r) == choices, (a, b)
        assert r["agreement"] == pytest.approx(agreement)
    assert recs[f"{A0}__{A1}"]["judge"]["score_0"] == pytest.approx(2 / 3)
    assert recs[f"{A0}__{A1}"]["judge"]["score_1"] == pytest.approx(1 / 3)
    meta = read_meta(dataset, "human-d3po")
    assert meta["counts"]["ties"] == 2 and meta["counts"]["votes"] == 18
    assert meta["agreement"]["annotators"] == 3

    best_worst = import_d3po(paths, samples, policy="best-worst")
    assert [(p.key_0, p.key_1, p.label_0) for p in best_worst] == [(A0, A1, 1.0), (B1, B2, 1.0)]
    # the same through the one-call entry point, format detected
    pairs2, report = import_human(paths, "auto", samples)
    assert report["format"] == "d3po" and report["votes"] == 18
    assert [(p.pair_id, p.label_0) for p in pairs2] == [(p.pair_id, p.label_0) for p in pairs]


def test_csv(dataset, samples, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "key_0,key_1,choice,annotator,lead_time_s\n"
        f"{A0},{A1},0,ann,3.5\n"
        f"{A0},{A1},0,bob,\n"
        f"{A1},{A0},0,cy,1\n"  # swapped: cy prefers A1
        f"{A0},{A2},0.5,ann,2\n"
        "\n"
        f"{B0},{B1},TIE,ann,\n"
        f"{B0},{B1},1,,4\n"  # no annotator: anonymous
    )
    assert detect_format(path) == "csv"
    votes, counts = read_votes([path], "auto", samples)
    assert counts == {"skipped": 0, "cancelled": 0} and len(votes) == 6
    assert votes[0].where == f"{path}:2" and votes[-1].where == f"{path}:8"
    recs = _write_set(dataset, samples, "human-csv", "csv", [path], votes)
    r = recs[f"{A0}__{A1}"]
    assert r["label_0"] == pytest.approx(2 / 3, abs=1e-6) and _choices(r) == {
        "ann": "0",
        "bob": "0",
        "cy": "1",
    }
    assert r["votes"][0]["lead_time_s"] == 3.5 and r["votes"][1]["lead_time_s"] is None
    assert recs[f"{A0}__{A2}"]["is_tie"]
    r = recs[f"{B0}__{B1}"]
    assert r["label_0"] == pytest.approx(0.25) and _choices(r) == {"ann": "tie", "anonymous": "1"}
    assert r["agreement"] == 0.0


def _ls_task(task_id, data, annotations):
    return {"id": task_id, "data": data, "annotations": annotations, "predictions": [], "project": 3}


def _ls_ann(ann_id, user, result_value, cancelled=False, lead=4.2, from_name="preference"):
    result = []
    if result_value is not None:
        kind = "pairwise" if "selected" in result_value else "choices"
        result = [{"id": f"r{ann_id}", "from_name": from_name, "to_name": "img_0", "type": kind,
                   "origin": "manual", "value": result_value}]  # fmt: skip
    return {"id": ann_id, "completed_by": user, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": "2025-02-03T10:00:00.123456Z", "lead_time": lead,
            "task": 0}  # fmt: skip


def test_labelstudio_export(dataset, samples, tmp_path):
    tasks = [
        _ls_task(11, {"key_0": A0, "key_1": A1, "prompt": "a red circle"}, [
            _ls_ann(101, 1, {"choices": ["Left"]}),
            _ls_ann(102, 2, {"choices": ["image 0"]}),
            _ls_ann(103, 3, {"selected": "right"}),
            _ls_ann(104, 4, {"choices": ["Right"]}, cancelled=True),
        ]),
        _ls_task(12, {"image_0": f"/data/local-files/?d=ds/images/{A2}.png",
                      "image_1": f"/data/local-files/?d=ds/images/{A1}.png"}, [
            _ls_ann(105, 1, {"choices": ["Tie"]}),
            _ls_ann(106, 2, {"choices": ["SAME"]}),
            _ls_ann(107, 3, None),  # submitted without a result: skipped
        ]),
        _ls_task(13, {"left": f"https://example.org/ds/{B1}.png", "right": f"https://example.org/ds/{B0}.png"}, [
            _ls_ann(108, {"id": 5, "email": "eve@example.org"}, {"choices": ["B"]}),
            _ls_ann(109, 1, {"selected": "left"}, lead=None),
        ]),
    ]  # fmt: skip
    path = tmp_path / "project-3-at-2025-02-03.json"
    path.write_text(json.dumps(tasks, indent=2))
    assert detect_format(path) == "labelstudio"
    votes, counts = read_votes([path], "labelstudio", samples)
    assert counts == {"skipped": 1, "cancelled": 1} and len(votes) == 7
    assert votes[0].where == f"{path}, task 11, annotation 101"
    recs = _write_set(dataset, samples, "human-labelstudio", "labelstudio", [path], votes)
    r = recs[f"{A0}__{A1}"]
    assert r["label_0"] == pytest.approx(2 / 3, abs=1e-6) and _choices(r) == {"1": "0", "2": "0", "3": "1"}
    assert r["votes"][0]["lead_time_s"] == 4.2 and r["votes"][0]["created_at"].startswith("2025-02-03")
    tie = recs[f"{A1}__{A2}"]  # given as (A2, A1): canonical order, still a tie
    assert tie["is_tie"] and tie["agreement"] == 1.0 and _choices(tie) == {"1": "tie", "2": "tie"}
    r = recs[f"{B0}__{B1}"]  # left = B1: "B" and "left" disagree
    assert r["label_0"] == 0.5 and _choices(r) == {"eve@example.org": "0", "1": "1"} and r["agreement"] == 0.0
    assert r["votes"][1]["lead_time_s"] is None


@pytest.mark.parametrize(
    "name, content, fmt",
    [
        ("a.csv", "key_0,key_1,choice\n", "csv"),
        ("a.parquet", None, "pickapic"),
        ("a.json", [{"data": {}, "annotations": []}], "labelstudio"),
        ("a.json", [[1, 0], [0.5, 1]], "d3po"),
        ("a.json", [{"key_0": A0, "key_1": A1, "label_0": 1, "label_1": 0}], "pickapic"),
        ("a.json", [{"key_0": A0, "key_1": A1, "choice": "0"}], "prefkit"),
        ("a.jsonl", {"key_0": A0, "key_1": A1, "choice": "tie"}, "prefkit"),
        ("a.jsonl", {"key_0": A0, "key_1": A1, "label_0": 1, "votes": []}, "prefkit"),
        ("a.jsonl", {"image_0_uid": A0, "image_1_uid": A1, "label_0": 1, "label_1": 0}, "pickapic"),
    ],
)
def test_detect_format(tmp_path, name, content, fmt):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        _jsonl(path, ["", content])
    elif content is None:
        path.write_bytes(b"PAR1")
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert detect_format(path) == fmt


def test_detect_format_refuses_to_guess(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("A0 > A1\n")
    with pytest.raises(PrefkitError, match=r"labels\.txt.*--format"):
        detect_format(path)
    path = _jsonl(tmp_path / "x.jsonl", [{"foo": 1}])
    with pytest.raises(PrefkitError, match=re.escape(f"{path}:1") + ".*--format"):
        detect_format(path)


def test_import_human_runs_check_and_aggregation(samples, tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"key_0": A0, "key_1": A1, "choice": "0", "annotator": "x"}])
    b = tmp_path / "b.csv"
    b.write_text(f"key_0,key_1,choice,annotator\n{A0},{A1},1,y\n{A1},{A0},0,x\n")
    pairs, report = import_human([a, b], "auto", samples)
    assert report["format"] == "csv,prefkit" and report["votes"] == 3
    assert len(report["contradictions"]) == 1  # x said A0, then A1
    assert report["contradictions"][0].startswith(f"{b}:3") and f"{a}:1" in report["contradictions"][0]
    assert [(p.pair_id, p.label_0) for p in pairs] == [(f"{A0}__{A1}", pytest.approx(1 / 3, abs=1e-6))]
    with pytest.raises(PrefkitError, match=re.escape(f"{b}:3") + ".*contradicts.*--strict"):
        import_human([a, b], "auto", samples, strict=True)


# -- agreement ------------------------------------------------------------------------------------------


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: nominal data, 4 observers,
# 12 units, missing values (None). The paper's result: alpha = 0.743.
K2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _units(matrix) -> list[list[str]]:
    return [[str(row[u]) for row in matrix if row[u] is not None] for u in range(len(matrix[0]))]


def test_krippendorff_alpha_hand_worked_example():
    assert round(krippendorff_alpha_nominal(_units(K2011)), 3) == 0.743
    assert krippendorff_alpha_nominal([["0", "0"], ["1", "1"], ["tie", "tie", "tie"]]) == 1.0
    assert krippendorff_alpha_nominal([["0"], ["1"]]) is None  # no unit has two values
    assert krippendorff_alpha_nominal([["0", "0"], ["0", "0"]]) == 1.0  # one value only: D_e = 0
    # two coders, perfect disagreement on binary data: alpha below zero
    assert krippendorff_alpha_nominal([["0", "1"], ["1", "0"]]) < 0


RATINGS = [  # coders x units, pairwise choices with missing votes
    ["0", "0", "1", "tie", "0", None, "1", "1", "0", None, "tie", "0"],
    ["0", "1", "1", "tie", None, "1", "1", "0", "0", "0", "0", "0"],
    [None, "0", "1", "0", "0", "1", None, "1", "0", "tie", "tie", "1"],
]


def test_krippendorff_alpha_matches_the_krippendorff_package():
    krippendorff = pytest.importorskip("krippendorff")
    import numpy as np

    for matrix in (K2011, RATINGS):
        domain = sorted({v for row in matrix for v in row if v is not None}, key=str)
        code = {v: i for i, v in enumerate(domain)}
        data = np.array([[np.nan if v is None else code[v] for v in row] for row in matrix], dtype=float)
        theirs = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
        assert krippendorff_alpha_nominal(_units(matrix)) == pytest.approx(theirs, abs=1e-9)


def test_percent_agreement_by_hand():
    items = [["0", "0", "1"], ["tie", "tie"], ["1"], ["0", "1"]]
    # vote pairs: 3 (1 agrees) + 1 (agrees) + 0 + 1 (disagrees) = 2 of 5
    assert percent_agreement(items) == pytest.approx(2 / 5)
    assert pair_agreement(["0", "0", "1"]) == pytest.approx(1 / 3)
    assert pair_agreement(["0"]) is None
    assert percent_agreement([["1"]]) is None


# -- bad input: every error names the file and the line / record ---------------------------------------


def _raises(match_where: str, *pattern: str):
    return pytest.raises(PrefkitError, match=re.escape(match_where) + ".*" + ".*".join(pattern))


def test_malformed_json_line(samples, tmp_path):
    path = _jsonl(tmp_path / "v.jsonl", [{"key_0": A0, "key_1": A1, "choice": "0"}, '{"key_0": "x", '])
    with _raises(f"{path}:2:", "not JSON"):
        read_votes([path], "prefkit", samples)
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"key_0": 1},\n  oops\n]')
    with _raises(f"{path}:3:", "not JSON"):
        read_votes([path], "pickapic", samples)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"key_0": A0, "key_1": "g00000000_s07", "choice": "0"}, "unknown sample key 'g00000000_s07'"),
        ({"key_0": A0, "key_1": B0, "choice": "0"}, "different prompts"),
        ({"key_0": A1, "key_1": A1, "choice": "tie"}, "paired with itself"),
    ],
)
def test_bad_pairs_are_named_by_line(samples, tmp_path, bad, message):
    path = _jsonl(tmp_path / "v.jsonl", [{"key_0": A0, "key_1": A1, "choice": "0"}, "", bad])
    votes, _ = read_votes([path], "auto", samples)
    with _raises(f"{path}:3:", re.escape(message)):
        check_votes(votes, samples)


def test_duplicate_pairs(samples, tmp_path):
    path = _jsonl(
        tmp_path / "v.jsonl",
        [
            {"key_0": A0, "key_1": A1, "choice": "0", "annotator": "ann"},
            {"key_0": A0, "key_1": A1, "choice": "0", "annotator": "bob"},  # another annotator: fine
            {"key_0": A1, "key_1": A0, "choice": "1", "annotator": "ann"},  # same vote, swapped order
        ],
    )
    votes, _ = read_votes([path], "prefkit", samples)
    with _raises(f"{path}:3:", "duplicate pair", re.escape(f"{path}:1")):
        check_votes(votes, samples)
    path.write_text(path.read_text().splitlines()[0] + "\n" + path.read_text().splitlines()[0] + "\n")
    votes, _ = read_votes([path], "prefkit", samples)
    with _raises(f"{path}:2:", "duplicate pair"):
        check_votes(votes, samples)


def test_contradictory_labels(samples, tmp_path):
    path = tmp_path / "v.csv"
    path.write_text(f"key_0,key_1,choice,annotator\n{A0},{A1},0,ann\n{B0},{B1},1,ann\n{A1},{A0},0,ann\n")
    votes, _ = read_votes([path], "csv", samples)
    report = check_votes(votes, samples)
    assert len(report.contradictions) == 1
    assert report.contradictions[0].startswith(f"{path}:4:") and f"{path}:2" in report.contradictions[0]
    with _raises(f"{path}:4:", "contradicts", "--strict"):
        check_votes(votes, samples, strict=True)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"key_0": A0, "key_1": A1, "label_0": 1, "label_1": 1}, "label_0 1 + label_1 1 != 1"),
        ({"key_0": A0, "key_1": A1, "label_0": 0.7, "label_1": 0.3}, "not 1, 0 or 0.5"),
        ({"key_0": A0, "key_1": A1, "label_0": "yes", "label_1": 0}, "label_0 is not a number"),
        ({"key_0": A0, "label_0": 1, "label_1": 0}, "key_1 None is not a sample key"),
        ({"caption": "x", "label_0": 1, "label_1": 0}, "no sample keys"),
    ],
)
def test_pickapic_bad_labels(samples, tmp_path, record, message):
    good = {"key_0": A0, "key_1": A2, "label_0": 0, "label_1": 1}
    path = _jsonl(tmp_path / "p.jsonl", [good, record])
    with _raises(f"{path}:2:", re.escape(message)):
        read_votes([path], "pickapic", samples)


def test_bad_choice_csv_and_prefkit(samples, tmp_path):
    path = tmp_path / "v.csv"
    path.write_text(f"key_0,key_1,choice\n{A0},{A1},0\n{A0},{A2},left\n")
    with _raises(f"{path}:3:", "choice 'left' is not one of 0, 1, tie"):
        read_votes([path], "csv", samples)
    path.write_text(f"key_0,key_1\n{A0},{A1}\n")
    with _raises(f"{path}:1:", "lacks choice"):
        read_votes([path], "csv", samples)
    path.write_text(f"key_0,key_1,choice\n{A0},{A1},0,extra\n")
    with _raises(f"{path}:2:", "4 fields"):
        read_votes([path], "csv", samples)
    path = _jsonl(tmp_path / "v.jsonl", [{"key_0": A0, "key_1": A1, "choice": "maybe"}])
    with _raises(f"{path}:1:", "choice 'maybe'"):
        read_votes([path], "prefkit", samples)
    path = _jsonl(tmp_path / "w.jsonl", [{"key_0": A0, "key_1": A1, "choice": "0", "lead_time_s": -1}])
    with _raises(f"{path}:1:", "negative"):
        read_votes([path], "prefkit", samples)


def test_labelstudio_unknown_choice(samples, tmp_path):
    tasks = [
        _ls_task(21, {"key_0": A0, "key_1": A1}, [_ls_ann(201, 1, {"choices": ["Left"]})]),
        _ls_task(22, {"key_0": A0, "key_1": A2}, [_ls_ann(202, 1, {"choices": ["Maybe later"]})]),
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    with _raises(f"{path}, task 22, annotation 202", "'Maybe later'"):
        read_votes([path], "labelstudio", samples)
    tasks[1]["annotations"] = [_ls_ann(203, 1, {"selected": "middle"})]
    path.write_text(json.dumps(tasks))
    with _raises(f"{path}, task 22, annotation 203", "'middle'"):
        read_votes([path], "labelstudio", samples)
    tasks[1]["data"] = {"image": "x.png"}
    path.write_text(json.dumps(tasks))
    with _raises(f"{path}, task 22", "key_0/key_1"):
        read_votes([path], "labelstudio", samples)
    # a path whose name is no sample: check_votes names the task
    tasks[1] = _ls_task(
        23, {"image_0": "/img/nope.png", "image_1": A1}, [_ls_ann(204, 1, {"choices": ["0"]})]
    )
    path.write_text(json.dumps(tasks))
    votes, _ = read_votes([path], "labelstudio", samples)
    with _raises(f"{path}, task 23, annotation 204", "unknown sample key 'nope'"):
        check_votes(votes, samples)


@pytest.mark.parametrize(
    "lists, message",
    [
        ([[1, 0, 1]], "1 prompt groups of scores, but the dataset has 2 groups"),
        ([[1, 0, 1], [1, 0, 1], [0, 0, 0]], "3 prompt groups"),
        ([[1, 0, 1], [1, 0]], "group 1 (group_id 1) has 2 scores, but the dataset has 3 samples"),
        ([[1, 0, 1], [1, "good", 0]], "group 1, sample 1: score 'good' is not a finite number"),
        ([[1, None, 1], [1, 0, 0]], "group 0, sample 1: score None"),
        ({"scores": []}, "one list of scores per prompt group"),
    ],
)
def test_d3po_bad_files(samples, tmp_path, lists, message):
    good = tmp_path / "alice.json"
    good.write_text(json.dumps([[1, 0, 1], [0, 1, 1]]))
    bad = tmp_path / "bob.json"
    bad.write_text(json.dumps(lists))
    with _raises(f"{bad}:", re.escape(message)):
        import_d3po([good, bad], samples)


def test_unreadable_inputs(samples, tmp_path):
    with _raises(f"{tmp_path / 'missing.jsonl'}", "no such label file"):
        read_votes([tmp_path / "missing.jsonl"], "prefkit", samples)
    with pytest.raises(PrefkitError, match="--format xml"):
        read_votes([tmp_path / "a.xml"], "xml", samples)
    empty = _jsonl(tmp_path / "e.jsonl", [{"key_0": A0, "key_1": A1, "has_label": False, "votes": []}])
    with _raises(f"{empty}", "no votes found", "1 skipped"):
        read_votes([empty], "prefkit", samples)
    d3po = tmp_path / "alice.json"
    d3po.write_text(json.dumps([[1, 0, 1], [0, 1, 1]]))
    with _raises(f"{d3po}", "import_d3po"):
        read_votes([d3po], "auto", samples)


# -- atomic writes --------------------------------------------------------------------------------------


def _pairs(samples) -> list[Pair]:
    votes = [Vote(A0, A1, "0", "ann"), Vote(A0, A2, "tie", "ann"), Vote(B0, B1, "1", "ann")]
    return pairs_from_votes(votes, samples)


def test_write_label_set_failing_mid_write_leaves_no_file(dataset, samples, monkeypatch):
    import prefkit.label_sets as labels

    real = labels.atomic_write_bytes
    calls = []

    def flaky(path, data):
        calls.append(Path(path).name)
        if len(calls) == 2:  # the pairs file landed; the meta file fails (disk full, killed, ...)
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(labels, "atomic_write_bytes", flaky)
    with pytest.raises(OSError, match="No space"):
        write_label_set(dataset, "atomic-io", _pairs(samples), meta={"source": "human"})
    assert calls == ["atomic-io.jsonl", "atomic-io.meta.json"]
    assert not any(p.exists() for p in label_paths(dataset, "atomic-io").values())
    assert not list((dataset / "labels").glob(".atomic-io*"))  # no temporary file either
    assert "atomic-io" not in labels.label_sets(dataset)


def test_write_label_set_invalid_record_3_writes_nothing(dataset, samples):
    pairs = _pairs(samples)
    pairs[2].label_0 = 1.5
    with pytest.raises(PrefkitError, match=r"atomic-bad\.jsonl, record 3: key label_0"):
        write_label_set(dataset, "atomic-bad", pairs, meta={"source": "human"})
    assert not any(p.exists() for p in label_paths(dataset, "atomic-bad").values())


def test_overwrite_failing_leaves_no_half_set(dataset, samples, monkeypatch):
    import prefkit.label_sets as labels

    write_label_set(dataset, "atomic-over", _pairs(samples), meta={"source": "human"})
    assert "atomic-over" in labels.label_sets(dataset)
    real = labels.atomic_write_bytes

    def fail_on_meta(path, data):
        if str(path).endswith(".meta.json"):
            raise OSError(5, "Input/output error")
        real(path, data)

    monkeypatch.setattr(labels, "atomic_write_bytes", fail_on_meta)
    with pytest.raises(OSError):
        write_label_set(dataset, "atomic-over", _pairs(samples)[:1], meta={"source": "human"})
    # the old meta does not describe the new pairs: neither is left as a complete set
    assert "atomic-over" not in labels.label_sets(dataset)
    assert not label_paths(dataset, "atomic-over")["pairs"].exists()


def test_csv_module_is_the_reader(tmp_path, samples):
    """Quoted fields with commas and a BOM (Excel's CSV) read as the csv module reads them."""
    path = tmp_path / "excel.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f)
        w.writerow(["key_0", "key_1", "choice", "annotator"])
        w.writerow([A0, A1, "1", "Doe, Jane"])
    votes, _ = read_votes([path], "auto", samples)
    assert votes[0].annotator == "Doe, Jane" and votes[0].choice == "1" and votes[0].where == f"{path}:2"
