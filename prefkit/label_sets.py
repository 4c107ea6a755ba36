"""Label overlays: pairwise preferences (and per-sample scores) beside a trajectory dataset.

Shards are never modified. A label set NAME lives in ``DATASET/labels/``::

    NAME.jsonl          one pair per line (schemas/label.schema.json), Pick-a-Pic compatible fields
    NAME.scores.jsonl   per-sample scalar scores, when the source scores samples (schemas/score.schema.json)
    NAME.meta.json      how it was made: source, judge, pair policy, tie margin, counts, agreement
                        (schemas/labelset.schema.json)

All three are written atomically at the end of a run: an interrupted run leaves no label file.
``prefkit label stats`` adds ``NAME.gaps.png`` (a histogram of the score gaps; a view, not part of the set).

Conventions (docs/formats.md sections 6-7, as Pick-a-Pic v2): ``label_0 = 1`` means sample ``key_0`` won, ``0.5 / 0.5`` is a
tie, soft labels (several annotators) lie in between. Within a pair ``key_0 < key_1`` (the canonical
order); a vote given the other way round is flipped. Ties are kept (``is_tie``), never dropped; the
trainer decides what they contribute (nothing, for the DPO objectives).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.fileio import jsonl_objects, jsonl_records, parse_json, reading, remove_quietly, utc_timestamp
from prefkit.shards import atomic_write_bytes

LABELS_DIR = "labels"
PAIR_POLICIES = ("all", "best-worst", "vs-best")
CHOICES = ("0", "1", "tie")  # a vote: sample key_0 won, sample key_1 won, or a tie
CHOICE_LABEL = {"0": 1.0, "1": 0.0, "tie": 0.5}  # label_0 of a single vote


@dataclass
class Vote:
    """One judgement of one pair by one annotator (human or AI).

    choice: "0" (key_0 won), "1" (key_1 won) or "tie". ``where`` names the input (file:line) for errors.
    """

    key_0: str
    key_1: str
    choice: str
    annotator: str = "anonymous"
    lead_time_s: float | None = None
    created_at: str | None = None
    where: str = ""

    def canonical(self) -> Vote:
        """The same vote with key_0 < key_1 (the choice flipped if the keys were swapped)."""
        if self.key_0 <= self.key_1:
            return self
        flipped = {"0": "1", "1": "0", "tie": "tie"}[self.choice]
        return Vote(
            self.key_1, self.key_0, flipped, self.annotator, self.lead_time_s, self.created_at, self.where
        )

    @property
    def value(self) -> float:
        """label_0 of this vote alone: 1.0, 0.0 or 0.5."""
        return CHOICE_LABEL[self.choice]


@dataclass
class SampleInfo:
    """What labelling needs to know about one stored sample."""

    key: str
    group_id: int
    prompt: str


@dataclass
class Pair:
    """An aggregated pair record (one line of NAME.jsonl). See schemas/label.schema.json."""

    key_0: str
    key_1: str
    group_id: int
    caption: str
    label_0: float
    source: str
    has_label: bool = True
    votes: list[dict[str, Any]] = field(default_factory=list)
    agreement: float | None = None
    judge: dict[str, Any] | None = None
    split: str | None = None

    @property
    def pair_id(self) -> str:
        return f"{self.key_0}__{self.key_1}"

    @property
    def is_tie(self) -> bool:
        """A judged tie. A pair without a verdict (``has_label`` false) also carries 0.5 / 0.5, as in
        Pick-a-Pic, but is not a tie: it is counted as unlabelled."""
        return self.has_label and self.label_0 == 0.5

    def record(self, created_at: str) -> dict[str, Any]:
        return {
            "pair_id": self.pair_id,
            "group_id": self.group_id,
            "key_0": self.key_0,
            "key_1": self.key_1,
            "caption": self.caption,
            "label_0": self.label_0,
            "label_1": 1.0 - self.label_0,
            "is_tie": self.is_tie,
            "has_label": self.has_label,
            "source": self.source,
            "judge": self.judge,
            "votes": self.votes,
            "agreement": self.agreement,
            "split": self.split,
            "created_at": created_at,
        }


# -- the dataset's samples ----------------------------------------------------------------------------


def dataset_samples(folder: Path) -> dict[str, SampleInfo]:
    """key -> (group, prompt) for every sample of a dataset, read from the shards' json records only."""
    from prefkit.shards import iter_samples, read_manifest

    folder = Path(folder)
    read_manifest(folder)  # a clear error if this is not a dataset
    out: dict[str, SampleInfo] = {}
    for raw in iter_samples(folder, decode=False, fields=["json"]):
        with reading(raw.get("__url__", folder)):  # a json that is no record, a record without its keys
            rec = json.loads(raw["json"])
            out[rec["key"]] = SampleInfo(rec["key"], rec["group_id"], rec["prompt"])
    if not out:
        raise PrefkitError(f"{folder}: the dataset has no finished shards to label")
    return out


def groups_of(samples: dict[str, SampleInfo]) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for key in sorted(samples):
        groups.setdefault(samples[key].group_id, []).append(key)
    return groups


# -- pairs from scores ----------------------------------------------------------------------------------


def pairs_from_scores(
    scores: dict[str, float],
    samples: dict[str, SampleInfo],
    policy: str = "all",
    tie_margin: float = 0.0,
    source: str = "ai",
    judge: dict[str, Any] | None = None,
) -> list[Pair]:
    """Pairs within each prompt group from per-sample scores (higher is better).

    policy: ``all`` = every pair C(n, 2) (D3PO); ``best-worst`` = the best against the worst sample of
    the group (Flow-GRPO's DPO); ``vs-best`` = every other sample against the group's best.
    A pair whose score difference is <= ``tie_margin`` (equal scores with the default 0) is a tie,
    label 0.5 / 0.5, and is kept. Samples without a score are left out of pairing.
    """
    if policy not in PAIR_POLICIES:
        raise PrefkitError(f"--pairs {policy}: choose one of {', '.join(PAIR_POLICIES)}")
    if tie_margin < 0:
        raise PrefkitError(f"--tie-margin {tie_margin}: must be >= 0")
    out = []
    for group, keys in sorted(groups_of(samples).items()):
        keys = [k for k in keys if k in scores]
        if len(keys) < 2:
            continue
        if policy == "all":
            combos = list(itertools.combinations(keys, 2))
        else:
            # ties in the ranking are broken by key, so the choice is deterministic
            ranked = sorted(keys, key=lambda k: (-scores[k], k))
            best = ranked[0]
            combos = [(best, ranked[-1])] if policy == "best-worst" else [(best, k) for k in ranked[1:]]
        for a, b in combos:
            k0, k1 = sorted((a, b))
            diff = scores[k0] - scores[k1]
            label = 0.5 if abs(diff) <= tie_margin else (1.0 if diff > 0 else 0.0)
            j = dict(judge or {})
            j.update(score_0=scores[k0], score_1=scores[k1])
            out.append(Pair(k0, k1, group, samples[k0].prompt, label, source, judge=j))
    return out


# -- pairs from votes ----------------------------------------------------------------------------------


@dataclass
class VoteReport:
    """What aggregation found: contradictions (one annotator, two different choices for one pair)."""

    contradictions: list[str] = field(default_factory=list)
    skipped: int = 0


def check_sample_key(key: str, samples: dict[str, SampleInfo], where: str) -> None:
    if key not in samples:
        raise PrefkitError(f"{where}: unknown sample key {key!r}: no such sample in the dataset")


def check_pair_keys(key_0: str, key_1: str, samples: dict[str, SampleInfo], where: str) -> None:
    """Both samples exist, differ and come from one prompt group: the checks of every pair, imported
    (check_votes) or read back from a label set (read_pairs)."""
    for key in (key_0, key_1):
        check_sample_key(key, samples, where)
    if key_0 == key_1:
        raise PrefkitError(f"{where}: sample {key_0!r} is paired with itself")
    if samples[key_0].group_id != samples[key_1].group_id:
        raise PrefkitError(
            f"{where}: {key_0!r} and {key_1!r} come from different prompts "
            f"(groups {samples[key_0].group_id} and {samples[key_1].group_id}); pairs must share a prompt"
        )


def check_label_sum(label_0: float, label_1: float, where: str) -> None:
    if abs(label_0 + label_1 - 1.0) > 1e-6:
        raise PrefkitError(
            f"{where}: label_0 {label_0:g} + label_1 {label_1:g} != 1 "
            "(1/0: sample 0 won, 0/1: sample 1 won, 0.5/0.5: a tie)"
        )


def check_votes(votes: Sequence[Vote], samples: dict[str, SampleInfo], strict: bool = False) -> VoteReport:
    """Validate votes against the dataset; raise naming file and line. Duplicates are errors;
    contradictions are reported (and are errors with ``strict``)."""
    seen: dict[tuple[str, str, str], Vote] = {}
    report = VoteReport()
    for v in votes:
        where = v.where or "input"
        check_pair_keys(v.key_0, v.key_1, samples, where)
        if v.choice not in CHOICES:
            raise PrefkitError(f"{where}: choice {v.choice!r} is not one of 0, 1, tie")
        c = v.canonical()
        slot = (c.key_0, c.key_1, c.annotator)
        if slot in seen:
            first = seen[slot]
            if first.choice == c.choice:
                raise PrefkitError(
                    f"{where}: duplicate pair ({c.key_0}, {c.key_1}) from annotator {c.annotator!r}, "
                    f"already given at {first.where or 'an earlier line'}"
                )
            msg = (
                f"{where}: annotator {c.annotator!r} contradicts {first.where or 'an earlier line'} on pair "
                f"({c.key_0}, {c.key_1}): {first.choice} vs {c.choice}"
            )
            if strict:
                raise PrefkitError(msg + " (--strict)")
            report.contradictions.append(msg)
        else:
            seen[slot] = c
    return report


def pairs_from_votes(
    votes: Sequence[Vote], samples: dict[str, SampleInfo], source: str = "human"
) -> list[Pair]:
    """One pair per distinct (key_0, key_1): every vote kept, label_0 = mean of the votes' values
    (1 for key_0, 0 for key_1, 0.5 for a tie), agreement = share of vote pairs that agree."""
    by_pair: dict[tuple[str, str], list[Vote]] = {}
    for v in votes:
        c = v.canonical()
        by_pair.setdefault((c.key_0, c.key_1), []).append(c)
    out = []
    for (k0, k1), vs in sorted(by_pair.items()):
        label = sum(v.value for v in vs) / len(vs)
        out.append(
            Pair(
                k0,
                k1,
                samples[k0].group_id,
                samples[k0].prompt,
                round(label, 6),
                source,
                votes=[_vote_record(v) for v in vs],
                agreement=pair_agreement([v.choice for v in vs]),
            )
        )
    return out


def _vote_record(v: Vote) -> dict[str, Any]:
    return {
        "annotator": v.annotator,
        "choice": v.choice,
        "lead_time_s": v.lead_time_s,
        "created_at": v.created_at,
    }


# -- agreement ------------------------------------------------------------------------------------------


def pair_agreement(choices: Sequence[str]) -> float | None:
    """Share of the unordered pairs of votes on one item that agree; None with fewer than 2 votes."""
    n = len(choices)
    if n < 2:
        return None
    agree = sum(a == b for a, b in itertools.combinations(choices, 2))
    return agree / (n * (n - 1) / 2)


def percent_agreement(items: Iterable[Sequence[str]]) -> float | None:
    """Mean pairwise agreement over items with at least two votes (each item weighted by its vote pairs)."""
    agree = total = 0
    for choices in items:
        for a, b in itertools.combinations(choices, 2):
            agree += a == b
            total += 1
    return agree / total if total else None


def krippendorff_alpha_nominal(items: Iterable[Sequence[str]]) -> float | None:
    """Krippendorff's alpha for nominal data, any number of coders per item (Krippendorff 2011,
    "Computing Krippendorff's Alpha-Reliability", section C).

    Coincidence matrix o_ck = sum over items u with m_u >= 2 of (number of c-k ordered value pairs in u)
    / (m_u - 1); n_c = sum_k o_ck; n = sum_c n_c.
        D_o = sum_{c != k} o_ck / n,   D_e = sum_{c != k} n_c n_k / (n (n - 1)),   alpha = 1 - D_o / D_e.
    Returns None when no item has two values, and 1.0 when all values are equal (D_e = 0).
    """
    from collections import Counter

    o: Counter = Counter()
    for choices in items:
        m = len(choices)
        if m < 2:
            continue
        counts = Counter(choices)
        for c, nc in counts.items():
            for k, nk in counts.items():
                pairs = nc * (nc - 1) if c == k else nc * nk
                o[(c, k)] += pairs / (m - 1)
    if not o:
        return None
    n_c: Counter = Counter()
    for (c, _k), v in o.items():
        n_c[c] += v
    n = sum(n_c.values())
    d_o = sum(v for (c, k), v in o.items() if c != k) / n
    d_e = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n * (n - 1))
    if d_e == 0:
        return 1.0
    return 1.0 - d_o / d_e


def agreement_summary(pairs: Sequence[Pair]) -> dict[str, Any]:
    items = [[v["choice"] for v in p.votes] for p in pairs if len(p.votes) >= 2]
    annotators = sorted({v["annotator"] for p in pairs for v in p.votes})
    return {
        "items_with_2plus_votes": len(items),
        "annotators": len(annotators),
        "percent_agreement": percent_agreement(items),
        "krippendorff_alpha": krippendorff_alpha_nominal(items),
    }


# -- reading and writing label sets ---------------------------------------------------------------------


def label_paths(folder: Path, name: str) -> dict[str, Path]:
    d = Path(folder) / LABELS_DIR
    return {
        "pairs": d / f"{name}.jsonl",
        "scores": d / f"{name}.scores.jsonl",
        "meta": d / f"{name}.meta.json",
    }


def gaps_path(folder: Path, name: str) -> Path:
    """``labels/NAME.gaps.png``: the histogram of a set's score gaps that ``prefkit label stats`` draws.
    A view of the set, not part of it (not in :func:`label_paths`): rewritten by every ``label stats``,
    removed when the set is written again."""
    return Path(folder) / LABELS_DIR / f"{name}.gaps.png"


def score_gaps(
    pairs: Iterable[tuple[str, str, dict[str, Any] | None]], scores: dict[str, float] | None = None
) -> tuple[list[float], dict[str, float]]:
    """The score gaps |score_0 - score_1| of a set's (key_0, key_1, judge) pairs, and the per-sample
    scores they come from. A pair's scores are its judge's ``score_0`` / ``score_1``, else the set's
    per-sample ``scores`` (NAME.scores.jsonl); pairs with neither are left out. Without ``scores`` the
    per-sample scores are read off the pairs (the last pair naming a sample wins; for a pairwise judge,
    whose scores belong to the pair, they only give a scale)."""
    gaps: list[float] = []
    per_sample: dict[str, float] = dict(scores or {})
    for k0, k1, judge in pairs:
        j = judge or {}
        s0, s1 = j.get("score_0"), j.get("score_1")
        if s0 is None or s1 is None:
            if scores is None or k0 not in scores or k1 not in scores:
                continue
            s0, s1 = scores[k0], scores[k1]
        elif scores is None:
            per_sample.update({k0: float(s0), k1: float(s1)})
        gaps.append(abs(float(s0) - float(s1)))
    return gaps, per_sample


def check_name(folder: Path, name: str, overwrite: bool) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise PrefkitError(f"--name {name!r}: use letters, digits, '-' and '_' (it becomes a file name)")
    # a set exists once its meta file does (written last, as `label stats` lists them): the pairs file of
    # a run killed before that is an unfinished write, replaced by the next run
    meta = label_paths(folder, name)["meta"]
    if meta.exists() and not overwrite:
        raise PrefkitError(f"label set {name!r} exists ({meta}); choose another --name or pass --overwrite")


def write_label_set(
    folder: Path,
    name: str,
    pairs: Sequence[Pair],
    meta: dict[str, Any],
    scores: dict[str, float] | None = None,
    samples: dict[str, SampleInfo] | None = None,
) -> dict[str, Any]:
    """Validate every record against schemas/ and write the set atomically (pairs, scores, then meta).

    Returns the meta record. The meta file is written last: a set without it is not complete.
    """
    from prefkit import __version__
    from prefkit.schemas import validate

    created = utc_timestamp()
    paths = label_paths(folder, name)
    paths["pairs"].parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, p in enumerate(pairs):
        rec = p.record(created)
        validate(rec, "label", f"{paths['pairs']}, record {i + 1}")
        lines.append(json.dumps(rec, sort_keys=True, ensure_ascii=False))
    score_lines = []
    if scores is not None:
        for key in sorted(scores):
            rec = {"key": key, "group_id": samples[key].group_id if samples else None, "score": scores[key]}
            validate(rec, "score", f"{paths['scores']}, key {key}")
            score_lines.append(json.dumps(rec, sort_keys=True))
    ties = sum(p.is_tie for p in pairs)
    meta = {
        "name": name,
        "prefkit_version": __version__,
        "created_at": created,
        **meta,
        "counts": {
            "pairs": len(pairs),
            "ties": ties,
            "decided": sum(p.has_label and not p.is_tie for p in pairs),
            "unlabelled": sum(not p.has_label for p in pairs),
            "votes": sum(len(p.votes) for p in pairs),
            "scored_samples": len(scores) if scores is not None else None,
        },
        "agreement": agreement_summary(pairs),
    }
    validate(meta, "labelset", str(paths["meta"]))
    # an overwritten set stops being complete before its files change, and a write that fails part-way
    # removes what it wrote: never a pairs file without its meta, nor an old meta over new pairs
    paths["meta"].unlink(missing_ok=True)
    for stale in paths["pairs"].parent.glob(f".{name}.*.tmp-*"):  # temporary files of a killed write
        remove_quietly(stale)
    if scores is None:
        paths["scores"].unlink(missing_ok=True)  # a stale scores file of an overwritten set
    gaps_path(folder, name).unlink(missing_ok=True)  # the old set's histogram (label stats draws it again)
    written: list[Path] = []
    try:
        written.append(paths["pairs"])
        atomic_write_bytes(paths["pairs"], ("\n".join(lines) + "\n" if lines else "").encode())
        if scores is not None:
            written.append(paths["scores"])
            atomic_write_bytes(paths["scores"], ("\n".join(score_lines) + "\n").encode())
        written.append(paths["meta"])
        atomic_write_bytes(paths["meta"], json.dumps(meta, indent=2, sort_keys=True).encode())
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return meta


def label_sets(folder: Path) -> list[str]:
    """Names of the complete label sets of a dataset (those with a meta file)."""
    d = Path(folder) / LABELS_DIR
    return sorted(p.name[: -len(".meta.json")] for p in d.glob("*.meta.json")) if d.is_dir() else []


def read_pairs(folder: Path, name: str, samples: dict[str, SampleInfo] | None = None) -> list[dict[str, Any]]:
    """The pair records of a complete label set, each checked as the importer checks what it writes
    (check_pair_record): a label set shipped inside a downloaded dataset is input from a stranger.
    ``samples`` (dataset_samples of ``folder``) is read when not given."""
    paths = label_paths(folder, name)
    if not paths["meta"].is_file():
        raise PrefkitError(
            f"{folder}: no complete label set {name!r}; sets here: {', '.join(label_sets(folder)) or 'none'}"
        )
    if samples is None:
        samples = dataset_samples(folder)
    out: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    try:
        for where, raw in jsonl_records(paths["pairs"]):
            rec = check_pair_record(raw, samples, where)
            if rec["pair_id"] in seen:
                raise PrefkitError(
                    f"{where}: pair {rec['pair_id']} is already given at {seen[rec['pair_id']]}"
                )
            seen[rec["pair_id"]] = where
            out.append(rec)
    except FileNotFoundError:
        raise PrefkitError(f"{paths['pairs']}: missing, but its label set's meta file is there") from None
    return out


def check_pair_record(rec: Any, samples: dict[str, SampleInfo], where: str) -> dict[str, Any]:
    """One line of a label set, checked as write_label_set and check_votes check what the importer writes:
    the schema (types, label_0 in [0, 1]), the samples (known, distinct, one prompt group), and the
    derived fields (group_id, pair_id, canonical order, label_1 = 1 - label_0)."""
    from prefkit.schemas import validate

    if not isinstance(rec, dict):
        raise PrefkitError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    validate(rec, "label", where)
    k0, k1 = rec["key_0"], rec["key_1"]
    check_pair_keys(k0, k1, samples, where)
    if k0 > k1:
        raise PrefkitError(
            f"{where}: key_0 {k0!r} sorts after key_1 {k1!r}; a pair is stored with key_0 < key_1"
        )
    if rec["pair_id"] != f"{k0}__{k1}":
        raise PrefkitError(f"{where}: pair_id {rec['pair_id']!r} is not key_0__key_1 ({k0}__{k1})")
    if rec["group_id"] != samples[k0].group_id:
        raise PrefkitError(
            f"{where}: group_id {rec['group_id']}, but the samples are in group {samples[k0].group_id}"
        )
    check_label_sum(rec["label_0"], rec["label_1"], where)
    return rec


def read_scores(folder: Path, name: str, samples: dict[str, SampleInfo]) -> list[dict[str, Any]]:
    """The per-sample score records of a label set, each checked against schemas/score.schema.json and the
    dataset (a known sample key, its group, a finite score)."""
    import math

    from prefkit.schemas import validate

    path = label_paths(folder, name)["scores"]
    out = []
    for where, rec in jsonl_objects(path):
        validate(rec, "score", where)
        check_sample_key(rec["key"], samples, where)
        if rec["group_id"] is not None and rec["group_id"] != samples[rec["key"]].group_id:
            raise PrefkitError(
                f"{where}: group_id {rec['group_id']}, but sample {rec['key']} is in group "
                f"{samples[rec['key']].group_id}"
            )
        if not math.isfinite(float(rec["score"])):
            raise PrefkitError(f"{where}: score {rec['score']} is not finite")
        out.append(rec)
    return out


def read_meta(folder: Path, name: str) -> dict[str, Any]:
    """A label set's meta record, checked against schemas/labelset.schema.json."""
    from prefkit.schemas import validate

    path = label_paths(folder, name)["meta"]
    meta = parse_json(path.read_bytes(), str(path), whole_file=True)
    validate(meta, "labelset", str(path))
    return meta
