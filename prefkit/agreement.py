"""``prefkit label agreement DATASET --judge A --against B``: how far to trust a judge before training on
it. For the pairs both label sets hold (typically an AI judge's set against human votes from ``prefkit
annotate`` or an import), it reports the judge's accuracy on the pairs both decided (Wilson interval),
Cohen's kappa over the three verdicts first-won / second-won / tie with its interval (prefkit/math/
stats.py), the judge's coverage of the human decisions, its accuracy as a function of its own score gap
(quartiles of the gap; a PNG plot), and the tie margin that maximises kappa: pairs whose judge gap is at
most the margin count as the judge's ties.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.fileio import atomic_write_bytes


def verdict(label_0: float) -> str:
    """ "0" (the first image won), "1" (the second), or "tie"."""
    return "0" if label_0 > 0.5 else "1" if label_0 < 0.5 else "tie"


def _set(folder: Path, name: str, samples) -> tuple[dict[str, str], dict[str, float]]:
    """(pair id -> verdict, pair id -> the judge's score gap where the set has scores) of a label set."""
    from prefkit.label_sets import label_paths, read_pairs, read_scores

    scores = None
    if label_paths(folder, name)["scores"].is_file():
        scores = {r["key"]: float(r["score"]) for r in read_scores(folder, name, samples)}
    verdicts, gaps = {}, {}
    for rec in read_pairs(folder, name, samples):
        if not rec["has_label"]:
            continue
        pid = rec["pair_id"]
        verdicts[pid] = verdict(float(rec["label_0"]))
        judge = rec.get("judge") or {}
        s0, s1 = judge.get("score_0"), judge.get("score_1")
        if (s0 is None or s1 is None) and scores is not None:
            s0, s1 = scores.get(rec["key_0"]), scores.get(rec["key_1"])
        if s0 is not None and s1 is not None:
            gaps[pid] = abs(float(s0) - float(s1))
    return verdicts, gaps


def agreement(folder: str | Path, judge: str, against: str, bins: int = 4) -> dict[str, Any]:
    """The report (module docstring); also writes labels/JUDGE-vs-AGAINST.agreement.png."""
    from prefkit.label_sets import dataset_samples, label_paths
    from prefkit.math.stats import cohen_kappa, quantile, wilson_interval

    folder = Path(folder)
    if judge == against:
        raise PrefkitError("--judge and --against name the same label set: compare two different sets")
    samples = dataset_samples(folder)
    a, gaps = _set(folder, judge, samples)
    b, _ = _set(folder, against, samples)
    common = sorted(set(a) & set(b))
    if not common:
        raise PrefkitError(
            f"{folder}: label sets {judge!r} and {against!r} have no labelled pair in common; label the same "
            "pairs (e.g. prefkit annotate --labels JUDGE shows annotators the judge's pairs)"
        )
    decided = [p for p in common if a[p] != "tie" and b[p] != "tie"]
    human_decided = [p for p in common if b[p] != "tie"]

    def accuracy(pids: list[str]) -> dict[str, Any]:
        hits = sum(a[p] == b[p] for p in pids)
        low, high = wilson_interval(hits, len(pids)) if pids else (None, None)
        return {
            "pairs": len(pids),
            "agree": hits,
            "value": hits / len(pids) if pids else None,
            "low": low,
            "high": high,
        }

    by_margin = []
    with_gap = [p for p in decided if p in gaps]
    if with_gap:
        values = sorted(gaps[p] for p in with_gap)
        edges = (
            [quantile(values, i / bins) for i in range(bins + 1)]
            if len(values) >= 2 * bins
            else [values[0], values[-1]]
        )
        for i in range(len(edges) - 1):
            lo, hi = edges[i], edges[i + 1]
            last = i == len(edges) - 2
            pids = [p for p in with_gap if lo <= gaps[p] and (gaps[p] < hi or (last and gaps[p] <= hi))]
            by_margin.append({"gap_low": lo, "gap_high": hi, **accuracy(pids)})
    # the judge's tie margin that agrees best with the other set (kappa over all common pairs)
    best = None
    for m in [0.0, *sorted({gaps[p] for p in common if p in gaps})]:
        rated = ["tie" if p in gaps and gaps[p] <= m else a[p] for p in common]
        k = cohen_kappa(rated, [b[p] for p in common])["kappa"]
        if k is not None and (best is None or k > best["kappa"] + 1e-12):
            best = {"tie_margin": m, "kappa": k}
    report = {
        "dataset": str(folder),
        "judge": judge,
        "against": against,
        "common_pairs": len(common),
        "decided_by_both": len(decided),
        "coverage": len([p for p in human_decided if a[p] != "tie"]) / len(human_decided)
        if human_decided
        else None,
        "accuracy": accuracy(decided),
        "kappa": cohen_kappa([a[p] for p in common], [b[p] for p in common]),
        "by_judge_gap": by_margin,
        "best_tie_margin": best,
    }
    if by_margin:
        png = label_paths(folder, judge)["meta"].parent / f"{judge}-vs-{against}.agreement.png"
        atomic_write_bytes(png, accuracy_plot(by_margin, f"{judge} against {against}"))
        report["plot"] = str(png)
    return report


def accuracy_plot(rows: list[dict[str, Any]], title: str) -> bytes:
    """The judge's accuracy per gap bin with its Wilson interval, as a PNG (PIL only)."""
    from PIL import Image, ImageDraw

    W, H, left, bottom, top = 480, 260, 48, 48, 28
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), f"accuracy by the judge's score gap -- {title}", fill="black")
    plot_h = H - top - bottom
    d.rectangle([left, top, W - 8, H - bottom], outline="black")
    for v in (0.0, 0.5, 1.0):
        y = top + (1 - v) * plot_h
        d.line([left - 4, y, left, y], fill="black")
        d.text((8, y - 6), f"{v:.1f}", fill="black")
    width = (W - 8 - left) / max(len(rows), 1)
    for i, row in enumerate(rows):
        x0 = left + i * width + 6
        x1 = x0 + width - 12
        if row["value"] is not None:
            d.rectangle([x0, top + (1 - row["value"]) * plot_h, x1, H - bottom], fill=(31, 119, 180))
            xm = (x0 + x1) / 2
            d.line([xm, top + (1 - row["high"]) * plot_h, xm, top + (1 - row["low"]) * plot_h], fill="black")
        d.text((x0, H - bottom + 6), f"{row['gap_low']:.3g}-", fill="black")
        d.text((x0, H - bottom + 20), f"{row['gap_high']:.3g} ({row['pairs']})", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def print_agreement(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    acc, kappa = report["accuracy"], report["kappa"]
    console = Console()
    console.print(
        f"{report['judge']} against {report['against']}: {report['common_pairs']} pairs in common, "
        f"{report['decided_by_both']} decided by both; the judge decides {pct(report['coverage'])} of the "
        "pairs the other set decided"
    )
    interval = "" if acc["low"] is None else f" (95 % {acc['low']:.1%}-{acc['high']:.1%})"
    console.print(f"accuracy {pct(acc['value'])}{interval}")
    if kappa["kappa"] is not None:
        console.print(f"Cohen's kappa {kappa['kappa']:.3f} (95 % {kappa['low']:.3f} to {kappa['high']:.3f})")
    if report["by_judge_gap"]:
        table = Table("judge's score gap", "pairs", "accuracy", "95 % interval")
        for row in report["by_judge_gap"]:
            ci = "-" if row["low"] is None else f"{row['low']:.1%}-{row['high']:.1%}"
            table.add_row(
                f"{row['gap_low']:.4g} to {row['gap_high']:.4g}", str(row["pairs"]), pct(row["value"]), ci
            )
        console.print(table)
    best = report["best_tie_margin"]
    if best is not None:
        console.print(
            f"best --tie-margin for agreement: {best['tie_margin']:.4g} (kappa {best['kappa']:.3f})"
        )
    if "plot" in report:
        console.print(f"plot: {report['plot']}")
