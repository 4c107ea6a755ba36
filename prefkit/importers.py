"""Human label files -> :class:`prefkit.label_sets.Vote` objects (or, for D3PO score files, pairs).

Every reader names the FILE and the LINE (JSONL, CSV), the record or row (JSON lists, parquet) or the
task (Label Studio) in the :class:`~prefkit.errors.PrefkitError` it raises for malformed input, and puts
the same place in each vote's ``where`` so :func:`prefkit.label_sets.check_votes` (unknown keys, pairs across
prompts, a sample paired with itself, duplicates, contradictions) names it too.

Formats (``--format``):

``prefkit``
    prefkit's own JSONL. Either pair records as prefkit writes them (``key_0``, ``key_1`` and a ``votes``
    list of ``{annotator, choice, lead_time_s, created_at}``; a record with no votes gives one vote from
    its ``label_0``: 1, 0 or 0.5) or one vote per line ``{key_0, key_1, choice: "0"|"1"|"tie",
    annotator?, lead_time_s?, created_at?}``. Records with ``has_label: false`` are skipped (counted).
``pickapic``
    Pick-a-Pic-style records, as JSON Lines, a JSON list or a ``.parquet`` file: ``key_0``/``key_1``
    (or ``image_0_uid``/``image_1_uid``), ``label_0``/``label_1`` (1/0, 0/1, 0.5/0.5 = tie;
    ``label_0 + label_1`` must be 1), ``user_id`` as the annotator when present; ``has_label: false``
    records are skipped (counted).
``d3po``
    D3PO's per-annotator score lists, read by :func:`import_d3po`: one JSON file per annotator (the
    annotator is the file's stem) holding a list per prompt group (list index = the dataset's groups in
    ``group_id`` order) of one score per sample (index = ``sample_index``). The annotators' scores are
    averaged, then pairs are formed with :func:`prefkit.label_sets.pairs_from_scores`.
``csv``
    A header with ``key_0, key_1, choice`` (``0``, ``1``, ``tie``; ``0.5`` is a tie too) and optional
    ``annotator``, ``lead_time_s``, ``created_at``. Line numbers count the header as line 1.
``labelstudio``
    A Label Studio JSON export (a list of tasks). A task's ``data`` names the two samples as
    ``key_0``/``key_1``, ``image_0``/``image_1`` or ``left``/``right``: a sample key, or a path or URL
    whose file name without extension is one. Each annotation gives one vote: ``completed_by`` is the
    annotator, ``lead_time`` the time taken, ``was_cancelled: true`` a skip (counted). The verdict is a
    Choices result (``value.choices``: left / image 0 / 0 / first / A -> key_0; right / image 1 / 1 /
    second / B -> key_1; tie / equal / same / both -> tie; case-insensitive) or a Pairwise result
    (``value.selected``: left / right).

``annotate``
    The SQLite database ``prefkit annotate`` writes (``DATASET/annotations.sqlite``; the default input of
    ``prefkit label DATASET --source annotate``): one vote per row that is not undone, with its
    annotator, time spent and time stamp. Skips are not votes (counted as ``skipped``), undone rows
    neither (``undone``); ``chose_left`` / ``chose_right`` count decided votes by the side shown, a
    measure of position bias. Read while the server runs, it gives the votes committed so far.

``auto`` (:func:`detect_format`) decides per file:

* ``.csv`` -> csv; ``.parquet`` -> pickapic; ``.sqlite`` -> annotate;
* ``.json``: a list whose dicts have ``annotations`` or ``data`` -> labelstudio; a list of lists ->
  d3po; a list of dicts (or one dict) with ``choice`` or ``votes`` -> prefkit; with ``label_0`` ->
  pickapic;
* ``.jsonl`` / ``.ndjson``: the first record decides: ``choice`` or ``votes`` -> prefkit, else
  ``label_0`` -> pickapic;
* anything else is an error asking for ``--format``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.fileio import jsonl_objects, parse_json
from prefkit.label_sets import (
    Pair,
    SampleInfo,
    Vote,
    check_label_sum,
    check_votes,
    groups_of,
    pair_agreement,
    pairs_from_scores,
    pairs_from_votes,
)

FORMATS = ("auto", "prefkit", "pickapic", "d3po", "csv", "labelstudio", "annotate")
VOTE_FORMATS = ("prefkit", "pickapic", "csv", "labelstudio", "annotate")

_CHOICE_WORDS = {
    "0": "0",
    "left": "0",
    "image 0": "0",
    "image_0": "0",
    "first": "0",
    "a": "0",
    "1": "1",
    "right": "1",
    "image 1": "1",
    "image_1": "1",
    "second": "1",
    "b": "1",
    "tie": "tie",
    "equal": "tie",
    "same": "tie",
    "both": "tie",
}
_KEY_FIELDS = (("key_0", "key_1"), ("image_0", "image_1"), ("left", "right"))


def _counts() -> dict[str, int]:
    return {"skipped": 0, "cancelled": 0}


# -- public API ---------------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """The format of one label file, from its extension and content (rule in the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".parquet":
        return "pickapic"
    if suffix == ".sqlite":
        return "annotate"
    if suffix == ".json":
        data = _load_json(path)
        items = data if isinstance(data, list) else [data]
        if not items:
            raise PrefkitError(f"{path}: an empty JSON list: no labels to import")
        first = items[0]
        if isinstance(first, list):
            return "d3po"
        if isinstance(first, dict):
            if "annotations" in first or "data" in first:
                return "labelstudio"
            if "choice" in first or "votes" in first:
                return "prefkit"
            if "label_0" in first:
                return "pickapic"
        raise PrefkitError(
            f"{path}: cannot tell the label format from its first record; pass --format "
            "(prefkit, pickapic, d3po, csv, labelstudio)"
        )
    if suffix in (".jsonl", ".ndjson"):
        for where, rec in jsonl_objects(path):
            if "choice" in rec or "votes" in rec:
                return "prefkit"
            if "label_0" in rec:
                return "pickapic"
            raise PrefkitError(
                f"{where}: cannot tell the label format (no 'choice', 'votes' or 'label_0'); pass --format"
            )
        raise PrefkitError(f"{path}: the file has no records: no labels to import")
    raise PrefkitError(
        f"{path}: cannot tell the label format from the extension {suffix or '(none)'!r}; pass --format "
        "(prefkit, pickapic, d3po, csv, labelstudio)"
    )


def read_votes(
    paths: Sequence[Path], fmt: str, samples: dict[str, SampleInfo]
) -> tuple[list[Vote], dict[str, int]]:
    """Read human votes from ``paths`` in format ``fmt`` (or ``auto``, decided per file).

    Returns (votes, counts) with counts ``skipped`` (records without a label: ``has_label: false``, empty
    Label Studio results) and ``cancelled`` (Label Studio annotations with ``was_cancelled``). Votes are
    not checked against the dataset here beyond resolving Label Studio paths to keys: run
    :func:`prefkit.label_sets.check_votes` on them. D3PO score files are read by :func:`import_d3po`.
    """
    if fmt not in FORMATS:
        raise PrefkitError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if not paths:
        raise PrefkitError("no --input file given: pass the label file(s) to import")
    votes: list[Vote] = []
    counts = _counts()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise PrefkitError(f"{path}: no such label file")
        f = detect_format(path) if fmt == "auto" else fmt
        if f == "d3po":
            raise PrefkitError(
                f"{path}: D3PO score files are averaged over annotators into pairs; import them with "
                "import_d3po (or --format d3po), not with other formats"
            )
        reader = {
            "prefkit": _read_prefkit,
            "pickapic": _read_pickapic,
            "csv": _read_csv,
            "labelstudio": _read_labelstudio,
            "annotate": _read_annotate,
        }[f]
        votes.extend(reader(path, samples, counts))
    if not votes:
        raise PrefkitError(
            f"{', '.join(str(p) for p in paths)}: no votes found "
            f"({counts['skipped']} skipped, {counts['cancelled']} cancelled)"
        )
    return votes, counts


def import_d3po(
    paths: Sequence[Path],
    samples: dict[str, SampleInfo],
    policy: str = "all",
    tie_margin: float = 0.0,
) -> list[Pair]:
    """Pairs from D3PO per-annotator score files (one JSON file per annotator; annotator = file stem).

    Each file is a list with one entry per prompt group of the dataset (in ``group_id`` order), each a list
    of one number per sample of that group (in ``sample_index`` order). The annotators' scores are averaged
    per sample, then :func:`prefkit.label_sets.pairs_from_scores` forms pairs (``policy``, ``tie_margin``;
    equal means are ties, kept). Each pair keeps every annotator's own verdict on it (their two scores
    compared with the same margin) in ``votes`` and their pairwise ``agreement``; ``judge`` holds the mean
    scores (``score_0``, ``score_1``).
    """
    if not paths:
        raise PrefkitError("no --input file given: pass one D3PO score file per annotator")
    groups = groups_of(samples)
    order = sorted(groups)
    ordered = {g: sorted(groups[g], key=_sample_order) for g in order}
    per_annotator: dict[str, dict[str, float]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise PrefkitError(f"{path}: no such label file")
        annotator = path.stem
        if annotator in per_annotator:
            raise PrefkitError(f"{path}: annotator {annotator!r} given twice (file stems must differ)")
        data = _load_json(path)
        if not isinstance(data, list) or not all(isinstance(x, list) for x in data):
            raise PrefkitError(
                f"{path}: a D3PO score file is a JSON list with one list of scores per prompt group"
            )
        if len(data) != len(order):
            raise PrefkitError(
                f"{path}: {len(data)} prompt groups of scores, but the dataset has {len(order)} groups"
            )
        scores: dict[str, float] = {}
        for index, (g, row) in enumerate(zip(order, data, strict=True)):
            keys = ordered[g]
            if len(row) != len(keys):
                raise PrefkitError(
                    f"{path}: group {index} (group_id {g}) has {len(row)} scores, but the dataset has "
                    f"{len(keys)} samples in that group"
                )
            for j, (key, s) in enumerate(zip(keys, row, strict=True)):
                if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                    raise PrefkitError(
                        f"{path}: group {index}, sample {j}: score {s!r} is not a finite number"
                    )
                scores[key] = float(s)
        per_annotator[annotator] = scores
    names = sorted(per_annotator)
    mean = {key: sum(per_annotator[a][key] for a in names) / len(names) for key in samples}
    judge = {"name": "annotator-mean", "method": f"mean of {len(names)} annotator score(s) (d3po)"}
    pairs = pairs_from_scores(mean, samples, policy, tie_margin, source="human", judge=judge)
    for p in pairs:
        choices = []
        for a in names:
            diff = per_annotator[a][p.key_0] - per_annotator[a][p.key_1]
            choice = "tie" if abs(diff) <= tie_margin else ("0" if diff > 0 else "1")
            choices.append(choice)
            p.votes.append({"annotator": a, "choice": choice, "lead_time_s": None, "created_at": None})
        p.agreement = pair_agreement(choices)
    return pairs


def import_human(
    paths: Sequence[Path],
    fmt: str,
    samples: dict[str, SampleInfo],
    policy: str = "all",
    tie_margin: float = 0.0,
    strict: bool = False,
) -> tuple[list[Pair], dict[str, Any]]:
    """Everything ``prefkit label --source human`` needs: read, check, aggregate.

    Returns (pairs, report) with report keys ``format``, ``skipped``, ``cancelled``, ``votes`` and
    ``contradictions`` (messages; an error instead with ``strict``). ``policy`` and ``tie_margin`` apply to
    D3PO score files only: votes on explicit pairs are aggregated as given.
    """
    paths = [Path(p) for p in paths]
    fmts = {detect_format(p) if fmt == "auto" else fmt for p in paths} if fmt in FORMATS else {fmt}
    if "d3po" in fmts:
        if len(fmts) > 1:
            raise PrefkitError(
                f"{', '.join(map(str, paths))}: D3PO score files cannot be mixed with other label formats"
            )
        pairs = import_d3po(paths, samples, policy, tie_margin)
        report = {
            "format": "d3po",
            **_counts(),
            "votes": sum(len(p.votes) for p in pairs),
            "contradictions": [],
        }
        return pairs, report
    votes, counts = read_votes(paths, fmt, samples)
    checked = check_votes(votes, samples, strict=strict)
    pairs = pairs_from_votes(votes, samples, source="human")
    report = {
        "format": ",".join(sorted(fmts)),
        **counts,
        "votes": len(votes),
        "contradictions": checked.contradictions,
    }
    return pairs, report


# -- readers --------------------------------------------------------------------------------------------


def _read_prefkit(path: Path, samples: dict[str, SampleInfo], counts: dict[str, int]) -> list[Vote]:
    out = []
    for where, rec in _records(path):
        key_0, key_1 = _keys(rec, where, (("key_0", "key_1"),))
        if rec.get("has_label") is False:
            counts["skipped"] += 1
            continue
        if "choice" in rec:
            out.append(_vote(rec, where, key_0, key_1, _choice(rec["choice"], where)))
        elif rec.get("votes"):
            if not isinstance(rec["votes"], list):
                raise PrefkitError(f"{where}: 'votes' must be a list of {{annotator, choice, ...}}")
            for j, v in enumerate(rec["votes"], 1):
                w = f"{where} (vote {j})"
                if not isinstance(v, dict) or "choice" not in v:
                    raise PrefkitError(f"{w}: a vote is an object with 'annotator' and 'choice'")
                out.append(_vote(v, w, key_0, key_1, _choice(v["choice"], w)))
        elif "label_0" in rec:
            label = _number(rec["label_0"], "label_0", where)
            if "label_1" in rec:
                check_label_sum(label, _number(rec["label_1"], "label_1", where), where)
            choice = {1.0: "0", 0.0: "1", 0.5: "tie"}.get(label)
            if choice is None:
                raise PrefkitError(
                    f"{where}: label_0 {label} is a soft label without its votes; a record without "
                    "'votes' must have label_0 1, 0 or 0.5"
                )
            judge = rec.get("judge") if isinstance(rec.get("judge"), dict) else {}
            rec = {**rec, "annotator": rec.get("annotator") or judge.get("name")}
            out.append(_vote(rec, where, key_0, key_1, choice))
        else:
            raise PrefkitError(f"{where}: a prefkit label record needs 'choice', 'votes' or 'label_0'")
    return out


def _read_pickapic(path: Path, samples: dict[str, SampleInfo], counts: dict[str, int]) -> list[Vote]:
    out = []
    for where, rec in _records(path):
        if rec.get("has_label") is False:
            counts["skipped"] += 1
            continue
        key_0, key_1 = _keys(rec, where, (("key_0", "key_1"), ("image_0_uid", "image_1_uid")))
        if "label_0" not in rec or rec["label_0"] is None:
            raise PrefkitError(f"{where}: no 'label_0' (1: sample 0 won, 0: sample 1 won, 0.5: a tie)")
        label_0 = _number(rec["label_0"], "label_0", where)
        if rec.get("label_1") is not None:
            check_label_sum(label_0, _number(rec["label_1"], "label_1", where), where)
        choice = {1.0: "0", 0.0: "1", 0.5: "tie"}.get(label_0)
        if choice is None:
            raise PrefkitError(f"{where}: label_0 {label_0} is not 1, 0 or 0.5 (a tie)")
        vote_rec = {
            "annotator": rec.get("user_id"),
            "lead_time_s": rec.get("lead_time_s"),
            "created_at": rec.get("created_at"),
        }
        out.append(_vote(vote_rec, where, key_0, key_1, choice))
    return out


def _read_csv(path: Path, samples: dict[str, SampleInfo], counts: dict[str, int]) -> list[Vote]:
    out = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise PrefkitError(f"{path}:1: an empty CSV file; expected a header key_0,key_1,choice")
            header = [h.strip() for h in header]
            missing = [c for c in ("key_0", "key_1", "choice") if c not in header]
            if missing:
                raise PrefkitError(
                    f"{path}:1: the header lacks {', '.join(missing)} (found: {', '.join(header)})"
                )
            line = reader.line_num
            for row in reader:
                start, line = line + 1, reader.line_num
                where = f"{path}:{start}"
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise PrefkitError(f"{where}: {len(row)} fields, but the header has {len(header)}")
                rec: dict[str, Any] = {h: cell.strip() for h, cell in zip(header, row, strict=True)}
                key_0, key_1 = _keys(rec, where, (("key_0", "key_1"),))
                for opt in ("annotator", "lead_time_s", "created_at"):
                    if rec.get(opt) == "":
                        rec[opt] = None
                if rec.get("lead_time_s") is not None:
                    try:
                        rec["lead_time_s"] = float(rec["lead_time_s"])
                    except ValueError:
                        raise PrefkitError(
                            f"{where}: lead_time_s {rec['lead_time_s']!r} is not a number"
                        ) from None
                out.append(_vote(rec, where, key_0, key_1, _choice(rec["choice"], where)))
    except UnicodeDecodeError as exc:
        raise PrefkitError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise PrefkitError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    return out


def _read_labelstudio(path: Path, samples: dict[str, SampleInfo], counts: dict[str, int]) -> list[Vote]:
    data = _load_json(path)
    if not isinstance(data, list):
        raise PrefkitError(f"{path}: a Label Studio JSON export is a list of tasks")
    out = []
    for i, task in enumerate(data):
        if not isinstance(task, dict):
            raise PrefkitError(f"{path}, record {i + 1}: a Label Studio task is an object")
        task_id = task.get("id", f"#{i + 1}")
        where_task = f"{path}, task {task_id}"
        fields = task.get("data")
        if not isinstance(fields, dict):
            raise PrefkitError(f"{where_task}: no 'data' object naming the two samples")
        for names in _KEY_FIELDS:
            if names[0] in fields and names[1] in fields:
                key_0, key_1 = (_sample_ref(fields[n], n, where_task, samples) for n in names)
                break
        else:
            raise PrefkitError(
                f"{where_task}: data has none of key_0/key_1, image_0/image_1, left/right "
                f"(found: {', '.join(fields) or 'nothing'})"
            )
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise PrefkitError(f"{where_task}: 'annotations' must be a list")
        for j, ann in enumerate(annotations, 1):
            if not isinstance(ann, dict):
                raise PrefkitError(f"{where_task}, annotation {j}: an annotation is an object")
            where = f"{where_task}, annotation {ann.get('id', j)}"
            if ann.get("was_cancelled"):
                counts["cancelled"] += 1
                continue
            choice = _labelstudio_choice(ann.get("result"), where)
            if choice is None:
                counts["skipped"] += 1
                continue
            by = ann.get("completed_by")
            if isinstance(by, dict):  # older exports inline the user
                by = by.get("email") or by.get("id")
            rec = {"annotator": by, "lead_time_s": ann.get("lead_time"), "created_at": ann.get("created_at")}
            out.append(_vote(rec, where, key_0, key_1, choice))
    return out


def _read_annotate(path: Path, samples: dict[str, SampleInfo], counts: dict[str, int]) -> list[Vote]:
    from prefkit.annotate.store import read_decisions

    out = []
    for key in ("undone", "chose_left", "chose_right"):
        counts.setdefault(key, 0)
    for d in read_decisions(path):
        if d.undone_at is not None:
            counts["undone"] += 1
            continue
        if d.choice == "skip":
            counts["skipped"] += 1
            continue
        if d.choice != "tie":
            winner = d.key_0 if d.choice == "0" else d.key_1
            counts["chose_left" if winner == d.left_key else "chose_right"] += 1
        lead = None if d.time_ms is None else d.time_ms / 1000
        out.append(
            Vote(d.key_0, d.key_1, d.choice, d.annotator, lead, d.created_at, f"{path}, vote {d.vote_id}")
        )
    return out


def _labelstudio_choice(result: Any, where: str) -> str | None:
    """The verdict of one annotation's result list; None when it has none (an empty submission)."""
    if result is None:
        return None
    if not isinstance(result, list):
        raise PrefkitError(f"{where}: 'result' must be a list")
    found = []
    for r in result:
        value = r.get("value") if isinstance(r, dict) else None
        if not isinstance(value, dict):
            continue
        if "choices" in value:
            choices = value["choices"]
            if not isinstance(choices, list) or len(choices) != 1:
                raise PrefkitError(f"{where}: choices {choices!r}: expected exactly one choice")
            found.append(_word_choice(choices[0], where))
        elif "selected" in value:
            sel = value["selected"]
            if not isinstance(sel, str) or sel.strip().lower() not in ("left", "right"):
                raise PrefkitError(f"{where}: Pairwise selected {sel!r} is not 'left' or 'right'")
            found.append("0" if sel.strip().lower() == "left" else "1")
    if len(set(found)) > 1:
        raise PrefkitError(f"{where}: the annotation's results disagree ({', '.join(found)})")
    return found[0] if found else None


# -- helpers --------------------------------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PrefkitError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return parse_json(text, str(path), whole_file=True)


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of a JSONL file (file:line), a JSON list or object (file, record N) or parquet."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet(path)
    elif suffix == ".json":
        data = _load_json(path)
        items = data if isinstance(data, list) else [data]
        for i, rec in enumerate(items, 1):
            where = f"{path}, record {i}"
            if not isinstance(rec, dict):
                raise PrefkitError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield where, rec
    else:
        yield from jsonl_objects(path)


def _parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with datasets
        raise PrefkitError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    wanted = (
        "key_0", "key_1", "image_0_uid", "image_1_uid", "label_0", "label_1", "has_label",
        "user_id", "created_at", "lead_time_s",
    )  # fmt: skip
    try:
        pf = pq.ParquetFile(path)
        columns = [c for c in wanted if c in pf.schema_arrow.names]
        table = pf.read(columns=columns)  # never the image bytes
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise PrefkitError(f"{path}: not a readable parquet file ({exc})") from None
    for i, rec in enumerate(table.to_pylist(), 1):
        if hasattr(rec.get("created_at"), "isoformat"):
            rec["created_at"] = rec["created_at"].isoformat()
        yield f"{path}, row {i}", rec


def _keys(rec: dict[str, Any], where: str, names: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    for a, b in names:
        if a in rec or b in rec:
            key_0, key_1 = rec.get(a), rec.get(b)
            for n, k in ((a, key_0), (b, key_1)):
                if not isinstance(k, str) or not k:
                    raise PrefkitError(f"{where}: {n} {k!r} is not a sample key")
            return key_0, key_1
    raise PrefkitError(f"{where}: no sample keys ({' or '.join(f'{a}/{b}' for a, b in names)})")


def _sample_ref(value: Any, name: str, where: str, samples: dict[str, SampleInfo]) -> str:
    """A sample key given as the key itself or a path/URL whose file name (without extension) is one."""
    if not isinstance(value, str) or not value:
        raise PrefkitError(f"{where}: data.{name} {value!r} is neither a sample key nor a path")
    if value in samples:
        return value
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(value)
    candidates = [parts.path] + [v for _, v in parse_qsl(parts.query)]  # /data/local-files/?d=a/b.png
    stems = [Path(c.rstrip("/")).name.split(".")[0] for c in candidates if c.rstrip("/")]
    for stem in stems:
        if stem in samples:
            return stem
    # not a sample: check_votes names it as an unknown key
    return stems[-1] if stems else value


def _choice(value: Any, where: str) -> str:
    if isinstance(value, bool):
        raise PrefkitError(f"{where}: choice {value!r} is not one of 0, 1, tie")
    if isinstance(value, (int, float)):
        text = {0: "0", 1: "1", 0.5: "tie"}.get(value)
    else:
        text = str(value).strip().lower()
        text = {"0": "0", "1": "1", "tie": "tie", "0.5": "tie"}.get(text)
    if text is None:
        raise PrefkitError(f"{where}: choice {value!r} is not one of 0, 1, tie")
    return text


def _word_choice(value: Any, where: str) -> str:
    choice = _CHOICE_WORDS.get(str(value).strip().lower()) if isinstance(value, str) else None
    if choice is None:
        raise PrefkitError(
            f"{where}: choice {value!r} is not a preference; use left/right/tie (or image 0, image 1, "
            "first, second, A, B, equal, same, both)"
        )
    return choice


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value) if isinstance(value, str) else None
        except ValueError:
            value = None
        if value is None:
            raise PrefkitError(f"{where}: {name} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise PrefkitError(f"{where}: {name} {value} is not a finite number")
    return value


def _vote(rec: dict[str, Any], where: str, key_0: str, key_1: str, choice: str) -> Vote:
    annotator = rec.get("annotator")
    annotator = "anonymous" if annotator is None or annotator == "" else str(annotator)
    lead = rec.get("lead_time_s")
    if lead is not None:
        lead = _number(lead, "lead_time_s", where)
        if lead < 0:
            raise PrefkitError(f"{where}: lead_time_s {lead} is negative")
    created = rec.get("created_at")
    if created is not None and not isinstance(created, str):
        created = str(created)
    return Vote(key_0, key_1, choice, annotator, lead, created, where)


def _sample_order(key: str) -> tuple[int, str]:
    """Samples of a group in sample_index order: keys end in ``_sNN`` (NN may pass 99)."""
    tail = key.rsplit("_s", 1)[-1]
    return (int(tail), key) if tail.isdigit() else (1 << 62, key)
