"""``prefkit label``: import human labels or run an AI/rule judge, and write a label overlay.

Reads top to bottom: validate (nothing written on bad input), read the dataset's sample index, then
either import votes from files or stream the shards' images through a judge, form pairs within prompt
groups, and write ``labels/NAME.jsonl`` (+ ``.scores.jsonl``, ``.meta.json``) atomically at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefkit.config import LabelConfig
from prefkit.errors import PrefkitError
from prefkit.importers import FORMATS, detect_format, import_human
from prefkit.label_sets import (
    CHOICE_LABEL,
    PAIR_POLICIES,
    Pair,
    SampleInfo,
    check_name,
    dataset_samples,
    pairs_from_scores,
    write_label_set,
)
from prefkit.math.stats import GAP_QUANTILES
from prefkit.progress import progress

# the importers' formats: prefkit, pickapic, d3po, csv, labelstudio, annotate
HUMAN_FORMATS = tuple(f for f in FORMATS if f != "auto")
RULE_SOURCES = ("jpeg",)


def source_kind(source: str) -> str:
    if source == "human" or source in HUMAN_FORMATS:
        return "human"
    return "rule" if source in RULE_SOURCES else "ai"


def default_name(source: str) -> str:
    if source.startswith("python:"):
        return source.rsplit(":", 1)[-1].replace(".", "-")
    return "human" if source_kind(source) == "human" else source


def run_label(cfg: LabelConfig) -> dict[str, Any]:
    """Label ``cfg.dataset`` from ``cfg.source``; returns the label set's meta record."""
    from prefkit.shards import read_manifest

    # 1. validate ------------------------------------------------------------------------------------
    if not cfg.dataset:
        raise PrefkitError("DATASET is required: a folder written by `prefkit generate`")
    if not cfg.source:
        raise PrefkitError(
            "--source is required: human (with --input), jpeg, shapes, aesthetic, pickscore, hps, imagereward, llava, python:..."
        )
    folder = Path(cfg.dataset).expanduser()
    if not folder.is_dir():
        raise PrefkitError(f"DATASET {folder}: no such folder")
    read_manifest(folder)
    if cfg.pairs not in PAIR_POLICIES:
        raise PrefkitError(f"--pairs {cfg.pairs}: choose one of {', '.join(PAIR_POLICIES)}")
    if cfg.tie_margin < 0:
        raise PrefkitError(f"--tie-margin {cfg.tie_margin}: must be >= 0")
    if cfg.batch_size < 1:
        raise PrefkitError(f"--batch-size {cfg.batch_size}: must be at least 1")
    name = cfg.name or default_name(cfg.source)
    check_name(folder, name, cfg.overwrite)
    kind = source_kind(cfg.source)
    samples = dataset_samples(folder)

    # 2. labels --------------------------------------------------------------------------------------
    if kind == "human":
        pairs, meta = _import_human(cfg, samples)
        return write_label_set(folder, name, pairs, meta)
    judge, pairs, scores = _judge(cfg, folder, samples, kind)
    meta = {
        "source": cfg.source,
        "kind": kind,
        "pairs_policy": cfg.pairs,
        "tie_margin": cfg.tie_margin if scores is not None else None,
        "judge": judge.info(),
    }
    meta = write_label_set(folder, name, pairs, meta, scores=scores, samples=samples)
    if scores is not None and not cfg.quiet:  # a scorer: is the margin of the ties anywhere near the gaps?
        summary = set_gaps([(p.key_0, p.key_1, p.judge) for p in pairs], scores, cfg.tie_margin)
        if summary is not None:
            from rich.console import Console

            Console().print(gap_line(name, summary), highlight=False, soft_wrap=True)
    return meta


def _import_human(cfg: LabelConfig, samples: dict[str, SampleInfo]) -> tuple[list[Pair], dict[str, Any]]:
    """The stage's settings (--source/--format, --input, the annotate default) checked and resolved, then
    :func:`prefkit.importers.import_human`; returns (pairs, the label set's meta)."""
    fmt = cfg.source if cfg.source in HUMAN_FORMATS else cfg.format
    inputs = list(cfg.input)
    if not inputs and fmt == "annotate":  # the votes of `prefkit annotate DATASET`
        from prefkit.annotate.store import DB_NAME

        db = Path(cfg.dataset).expanduser() / DB_NAME
        if not db.is_file():
            raise PrefkitError(
                f"{db}: no annotations yet; start the page with `prefkit annotate {cfg.dataset}` and vote first"
            )
        inputs = [str(db)]
    if not inputs:
        raise PrefkitError("human labels need --input FILE (repeat for several files)")
    paths = [Path(p).expanduser() for p in inputs]
    for p in paths:
        if not p.is_file():
            raise PrefkitError(f"--input {p}: no such file")
    if fmt == "auto":
        found = {detect_format(p) for p in paths}
        if len(found) != 1:
            raise PrefkitError(
                f"--input files have different formats ({', '.join(sorted(found))}); give --format"
            )
        fmt = found.pop()
    if fmt not in HUMAN_FORMATS:
        raise PrefkitError(f"--format {fmt}: choose auto, {', '.join(HUMAN_FORMATS)}")
    pairs, report = import_human(paths, fmt, samples, cfg.pairs, cfg.tie_margin, strict=cfg.strict)
    meta: dict[str, Any] = {
        "source": "human",
        "kind": "human",
        "format": fmt,
        "inputs": [str(p) for p in paths],
    }
    if fmt == "annotate":
        meta["instructions"] = _annotate_instructions(paths)
    if fmt == "d3po":
        meta.update(pairs_policy=cfg.pairs, tie_margin=cfg.tie_margin)
        return pairs, meta
    contradictions = report["contradictions"]
    if contradictions:
        from rich.console import Console

        console = Console(stderr=True)
        console.print(f"[yellow]{len(contradictions)} contradictory vote(s), kept as votes:[/]")
        for line in contradictions[:20]:
            console.print(f"  {line}", highlight=False)
    # the meta's report: the reader's counts and the contradictions (format and votes are in the meta)
    meta["report"] = {k: v for k, v in report.items() if k not in ("format", "votes")}
    return pairs, meta


def _annotate_instructions(paths: list[Path]) -> list[dict[str, Any]]:
    """What the annotators were asked: one record per (question, guidelines SHA-256) over the databases,
    with the votes given under it (as exported: not undone, not skipped), in the order first used."""
    from prefkit.annotate.store import read_instructions

    merged: dict[tuple[str, str | None], int] = {}
    for path in paths:
        for rec in read_instructions(path):
            key = (rec["question"], rec["guidelines_sha256"])
            merged[key] = merged.get(key, 0) + rec["votes"]
    return [{"question": q, "guidelines_sha256": g, "votes": n} for (q, g), n in merged.items()]


def iter_images(folder: Path, keys: set[str] | None = None) -> Iterator[tuple[str, Any, str]]:
    """(key, PIL image, prompt) of every sample, in shard order, decoding only the PNG and JSON."""
    import json

    from prefkit.fileio import reading
    from prefkit.shards import iter_samples, load_png, shard_spec

    spec = shard_spec(folder)
    for raw in iter_samples(folder, decode=False, fields=["png", "json"]):
        if keys is not None and raw["__key__"] not in keys:
            continue
        with reading(raw.get("__url__", folder)):  # a json that is no record, a record without a prompt
            rec = json.loads(raw["json"])
            prompt = rec["prompt"]
        yield raw["__key__"], load_png(raw["png"], spec, f"{folder}: {raw['__key__']}.png"), prompt


def judge_label_config(cfg, device: str, **settings) -> LabelConfig:
    """prefkit label's settings for the judge another stage runs (eval, loop): ``cfg``'s --source and
    --judge-* options (judge_model, judge_revision, processor, weights, method, template, bert_model,
    bert_layer, judge_device, judge_dtype, judge_batch_size), the judge on ``device`` unless
    --judge-device says otherwise."""
    return LabelConfig(
        source=cfg.source,
        judge_model=cfg.judge_model,
        judge_revision=cfg.judge_revision,
        processor=cfg.processor,
        weights=cfg.weights,
        method=cfg.method,
        template=cfg.template,
        bert_model=cfg.bert_model,
        bert_layer=cfg.bert_layer,
        device=cfg.judge_device or device,
        dtype=cfg.judge_dtype,
        batch_size=cfg.judge_batch_size,
        **settings,
    )


def judge_options(cfg: LabelConfig):
    """The judge's options from ``prefkit label``'s settings (``prefkit eval`` passes its own --judge-*
    flags through a LabelConfig, so both commands build judges the same way)."""
    from prefkit.judges import JudgeOptions

    return JudgeOptions(
        source=cfg.source,
        model=cfg.judge_model,
        revision=cfg.judge_revision,
        processor=cfg.processor,
        weights=cfg.weights,
        method=cfg.method,
        template=cfg.template,
        bert_model=cfg.bert_model,
        bert_layer=cfg.bert_layer,
        device=cfg.device,
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
    )


def _judge(cfg: LabelConfig, folder: Path, samples: dict[str, SampleInfo], kind: str):
    from prefkit.judges import is_pair_judge, make_judge

    judge = make_judge(judge_options(cfg))
    info = judge.info()
    with progress(not cfg.quiet, len(samples), "judge", "samples") as advance:
        if is_pair_judge(judge):
            if cfg.pairs != "all":
                raise PrefkitError(
                    f"--pairs {cfg.pairs} needs scores; a pairwise judge compares all pairs (--pairs all)"
                )
            return judge, _judge_pairs(judge, info, folder, samples, kind, cfg.batch_size, advance), None
        scores: dict[str, float] = {}
        batch: list[tuple[str, Any, str]] = []
        for item in iter_images(folder):
            batch.append(item)
            if len(batch) == cfg.batch_size:
                score_batch(judge, batch, scores)
                advance(len(batch))
                batch = []
        if batch:
            score_batch(judge, batch, scores)
            advance(len(batch))
    pairs = pairs_from_scores(scores, samples, cfg.pairs, cfg.tie_margin, source=kind, judge=info)
    return judge, pairs, scores


def score_batch(judge, batch, scores: dict[str, float]) -> None:
    """Score a batch of (key, PIL image, prompt) with a Scorer into ``scores[key]``, checked (one finite
    number per image)."""
    import math

    values = judge.score([b[1] for b in batch], [b[2] for b in batch])
    if len(values) != len(batch):
        raise PrefkitError(f"judge returned {len(values)} scores for {len(batch)} images")
    for (key, _, _), v in zip(batch, values, strict=True):
        v = float(v)
        if not math.isfinite(v):
            raise PrefkitError(f"judge gave a non-finite score ({v}) for sample {key}")
        scores[key] = v


def _judge_pairs(judge, info, folder: Path, samples, kind: str, batch_size: int, advance) -> list[Pair]:
    """Every pair of each prompt group, judged directly; one group's images in memory at a time."""
    import itertools

    pairs: list[Pair] = []
    current: dict[str, Any] = {}
    group_id = None

    def flush():
        todo = list(itertools.combinations(sorted(current), 2))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            verdicts = judge.compare([(current[a], current[b], samples[a].prompt) for a, b in chunk])
            for (a, b), v in zip(chunk, verdicts, strict=True):
                choice = v.get("choice")
                label = 0.5 if choice is None else CHOICE_LABEL[choice]  # no verdict: 0.5, has_label false
                details = {k: val for k, val in v.items() if k != "choice"}
                pairs.append(
                    Pair(
                        a,
                        b,
                        samples[a].group_id,
                        samples[a].prompt,
                        label,
                        kind,
                        choice is not None,
                        judge={**info, **details},
                    )
                )

    for key, image, _prompt in iter_images(folder):
        g = samples[key].group_id
        if group_id is not None and g != group_id:
            flush()
            current = {}
        group_id = g
        current[key] = image
        advance(1)
    if current:
        flush()
    return pairs


# -- score gaps ------------------------------------------------------------------------------------------


def set_gaps(pairs, scores: dict[str, float] | None, used: float | None) -> dict[str, Any] | None:
    """:func:`prefkit.math.stats.gap_summary` of a set's (key_0, key_1, judge) pairs (``scores``: its
    per-sample scores, if it has them; ``used``: its --tie-margin, None where none applied), with the gaps
    themselves under ``gaps``; None when no pair carries two scores."""
    from prefkit.label_sets import score_gaps
    from prefkit.math.stats import gap_summary

    gaps, per_sample = score_gaps(pairs, scores)
    if not gaps:
        return None
    return {**gap_summary(gaps, list(per_sample.values()), used, suggest=used is not None), "gaps": gaps}


def _num(v: float) -> str:
    return f"{v:.3g}"


def gap_line(name: str, s: dict[str, Any]) -> str:
    """One line: the quantiles of a set's score gaps, the suggested --tie-margin and how many pairs it
    (and the margin used) would make ties."""
    q = s["quantiles"]
    parts = [f"{k} {_num(v)}" for k, v in q.items()]
    line = f"score gaps of {name!r} ({s['pairs']} pairs): {', '.join(parts)}"
    within = {w["margin"]: w for w in s["within"]}
    if s["suggested"] is not None:
        w = within[s["suggested"]]
        line += (
            f"; suggested --tie-margin {_num(s['suggested'])} (1% of the scores' IQR, a heuristic) would tie "
            f"{w['pairs']} ({w['share']:.1%})"
        )
    if s["used"] is not None:
        w = within[s["used"]]
        line += f"; --tie-margin {_num(s['used'])} used: {w['pairs']} tie(s) ({w['share']:.1%})"
    return line


def write_gap_histogram(folder: Path, name: str, s: dict[str, Any]) -> Path:
    """labels/NAME.gaps.png: the histogram of the set's score gaps (log scale), the margin used in grey
    and the suggested one in red."""
    from prefkit.fileio import atomic_write_bytes
    from prefkit.grid import histogram_image
    from prefkit.label_sets import gaps_path
    from prefkit.shards import png_bytes

    marks = []
    if s["used"] is not None:
        marks.append((s["used"], f"used {_num(s['used'])}", (96, 96, 96)))
    if s["suggested"] is not None:
        marks.append((s["suggested"], f"suggested {_num(s['suggested'])}", (192, 0, 0)))
    title = f"{name}: |score_0 - score_1| of {s['pairs']} pairs"
    path = gaps_path(folder, name)
    atomic_write_bytes(path, png_bytes(histogram_image(s["gaps"], marks, title)))
    return path


def print_stats(folder: Path) -> list[dict[str, Any]]:
    """`prefkit label stats DATASET`: one row per label set (pairs, ties, sources, agreement); then, for
    every set whose pairs carry scores, the distribution of its score gaps (quantiles, pairs within
    candidate margins, a suggested --tie-margin) and its histogram, labels/NAME.gaps.png. Each row's
    ``gaps`` is :func:`set_gaps`'s summary (without the gaps themselves), or None."""
    from rich.console import Console
    from rich.table import Table

    from prefkit.label_sets import (
        dataset_samples,
        label_paths,
        label_sets,
        read_meta,
        read_pairs,
        read_scores,
    )
    from prefkit.shards import read_manifest

    manifest = read_manifest(folder)
    names = label_sets(folder)
    table = Table(
        title=f"labels of {folder} ({manifest['plan']['num_samples']} samples, "
        f"{manifest['plan']['num_groups']} prompt groups)"
    )
    table.add_column("set", no_wrap=True)
    table.add_column("source", overflow="fold")
    # decided = a winner; none = no usable verdict; raters = annotators; alpha = Krippendorff (nominal)
    for col in ("pairs", "decided", "ties", "none", "votes", "raters", "agree", "alpha"):
        table.add_column(col, justify="right", overflow="fold")
    gap_table = Table(title="score gaps |score_0 - score_1| of the pairs")
    gap_table.add_column("set", no_wrap=True)
    for col in ("pairs", *(k for k, _ in GAP_QUANTILES), "used", "suggested"):
        gap_table.add_column(col, justify="right", overflow="fold")
    rows, notes = [], []
    samples = dataset_samples(folder) if names else {}
    for name in names:
        meta = read_meta(folder, name)
        pairs = read_pairs(folder, name, samples)
        c, ag = meta["counts"], meta["agreement"]
        kinds = sorted({p["source"] for p in pairs})
        row = {"name": name, "source": meta["source"], "kinds": kinds, **c, **ag}
        rows.append(row)
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(
            name,
            f"{meta['source']} ({'/'.join(kinds) or '-'})",
            str(c["pairs"]),
            str(c["decided"]),
            str(c["ties"]),
            str(c["unlabelled"]),
            str(c["votes"]),
            str(ag["annotators"]),
            fmt(ag["percent_agreement"]),
            fmt(ag["krippendorff_alpha"]),
        )
        scores = None
        if label_paths(folder, name)["scores"].is_file():
            scores = {r["key"]: float(r["score"]) for r in read_scores(folder, name, samples)}
        gaps = set_gaps([(p["key_0"], p["key_1"], p["judge"]) for p in pairs], scores, meta.get("tie_margin"))
        row["gaps"] = None
        if gaps is None:
            continue
        gap_table.add_row(
            name,
            str(gaps["pairs"]),
            *(_num(v) for v in gaps["quantiles"].values()),
            "-" if gaps["used"] is None else _num(gaps["used"]),
            "-" if gaps["suggested"] is None else _num(gaps["suggested"]),
        )
        within = ", ".join(
            f"<= {_num(w['margin'])}: {w['pairs']} ({w['share']:.1%}"
            + (", suggested" if w["suggested"] else "")
            + (", used" if w["margin"] == gaps["used"] else "")
            + ")"
            for w in gaps["within"]
        )
        try:
            picture = str(write_gap_histogram(folder, name, gaps))
        except (PrefkitError, OSError) as exc:  # a read-only dataset: the numbers still stand
            picture = f"not written ({exc})"
        notes.append(f"{name}: pairs with a gap {within}; histogram {picture}")
        row["gaps"] = {k: v for k, v in gaps.items() if k != "gaps"}
    console = Console()
    if not names:
        console.print(f"{folder}: no label sets yet (prefkit label {folder} --source ...)")
        return rows
    console.print(table)
    if notes:
        console.print(gap_table)
        for line in notes:
            console.print(line, highlight=False, soft_wrap=True)
        console.print(
            "suggested --tie-margin: 1% of the interquartile range of the set's per-sample scores, a "
            "heuristic (no repeat scores to measure noise with); '-' where no margin applies "
            "(a pairwise judge). docs/commands.md#prefkit-label",
            highlight=False,
            soft_wrap=True,
        )
    return rows
