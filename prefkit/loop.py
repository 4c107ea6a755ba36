"""``prefkit loop``: rounds of generate -> label -> train, the online reward methods run as offline rounds.

Round r (r = 0 .. R) in OUT/round-NNN/:
  data/     ``run_generate`` with the LoRA of round r - 1 (round 0: the base model), seed + r: the current
            policy's trajectories, whose stored lp are the old policy of the next update
  data/labels/NAME.*   ``run_label`` with --source (its per-sample scores are the reward)
  train/    ``run_train`` from that same LoRA (--init-lora), on that data (rounds 0 .. R - 1 only)
Round R is generated and scored but not trained: it measures the last adapter. rounds.jsonl holds one
record per round (schemas/round.schema.json): the mean score of the round's fresh samples -- the reward of
the policy after r rounds of training -- and the round's final training metrics; rewards.png plots it.

The same library calls as the CLI stages (no subprocess). A finished stage is kept when --resume is given
(a complete dataset, a complete label set, a training run with summary.json); an interrupted generation
or training resumes where it stopped. Run it as one process.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from prefkit.config import GenerateConfig, LabelConfig, LoopConfig, load_config_file
from prefkit.errors import PrefkitError
from prefkit.fileio import check_output_folder, write_yaml
from prefkit.shards import atomic_write_bytes
from prefkit.training.config import TrainConfig
from prefkit.training.table import IMAGE_PAIRS
from prefkit.training.table import OBJECTIVES as TABLE

# every objective of the table that trains on trajectories: the loop generates them
OBJECTIVES = tuple(name for name, row in TABLE.items() if row.data != IMAGE_PAIRS)


def round_dir(out: Path, r: int) -> Path:
    return out / f"round-{r:03d}"


def run_loop(cfg: LoopConfig) -> list[dict[str, Any]]:
    """Run (or complete, with ``cfg.resume``) ``cfg.rounds`` rounds; returns the rounds' records."""
    from prefkit.label import default_name

    if not cfg.out:
        raise PrefkitError("--out is required: the folder of the rounds")
    if cfg.rounds < 1:
        raise PrefkitError(f"--rounds {cfg.rounds}: must be at least 1")
    cfg = dataclasses.replace(cfg, objective=cfg.objective.strip().lower())
    if cfg.objective not in OBJECTIVES:
        raise PrefkitError(f"--objective {cfg.objective}: choose {', '.join(OBJECTIVES)}")
    if not cfg.prompt and not cfg.prompts:
        raise PrefkitError("give the prompts: --prompt TEXT (repeat) or --prompts FILE")
    out = Path(cfg.out).expanduser()
    check_output_folder(out, allow=cfg.resume, hint="pass --resume to continue the rounds there")
    extra = load_config_file(cfg.train_config, TrainConfig) if cfg.train_config else {}
    for key in ("dataset", "out", "init_lora", "labels", "resume"):
        if key in extra:
            raise PrefkitError(f"--train-config {cfg.train_config}: {key} is set by the loop itself")
    if extra.get("push_to_hub"):
        raise PrefkitError(
            f"--train-config {cfg.train_config}: push_to_hub would upload every round's LoRA; publish the "
            "round you want afterwards with `prefkit publish --lora OUT/round-NNN/train --repo-id OWNER/NAME`"
        )
    name = default_name(cfg.source)
    check_judge(cfg)  # a judge that cannot run stops the loop before round 0, not after it
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / "config.yaml", dataclasses.asdict(cfg))
    records: list[dict[str, Any]] = []
    for r in range(cfg.rounds + 1):
        t0 = time.perf_counter()
        rdir = round_dir(out, r)
        data, train_out = rdir / "data", rdir / "train"
        lora = round_dir(out, r - 1) / "train" / "lora" if r > 0 else None
        _generate(cfg, data, lora, r)
        _label(cfg, data, name)
        base = data  # round 0 samples with the base model already
        if cfg.base_line and r > 0:  # the base model on the round's seeds and prompts: a paired baseline
            base = rdir / "base"
            _generate(cfg, base, None, r)
            _label(cfg, base, name)
        train = None
        if r < cfg.rounds:
            train = _train(cfg, extra, data, train_out, lora, name, r)
        record = _record(r, data, name, lora, train, train_out, time.perf_counter() - t0)
        if cfg.base_line:
            record.update(_base_line(data, base, name))
        records.append(record)
        _write_records(out, records)
    plot_rewards(records, out / "rewards.png", f"{cfg.objective}, {cfg.source}")
    return records


def _generate(cfg: LoopConfig, data: Path, lora: Path | None, r: int) -> None:
    from prefkit.generate import run_generate

    manifest = data / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("status") == "complete":
        return
    run_generate(
        GenerateConfig(
            out=str(data),
            model=cfg.model,
            lora=str(lora) if lora else None,
            prompt=list(cfg.prompt),
            prompts=cfg.prompts,
            samples_per_prompt=cfg.samples_per_prompt,
            steps=cfg.steps,
            guidance=cfg.guidance,
            eta=cfg.eta,
            noise_level=cfg.noise_level,
            seed=cfg.seed + r,
            height=cfg.height,
            width=cfg.width,
            batch_size=cfg.generate_batch_size,
            device=cfg.device,
            resume=data.is_dir() and any(data.iterdir()),
            quiet=cfg.quiet,
        )
    )


def _label(cfg: LoopConfig, data: Path, name: str) -> None:
    from prefkit.label import run_label
    from prefkit.label_sets import label_sets

    if name in label_sets(data):
        return
    run_label(label_config(cfg, data, name))


def label_config(cfg: LoopConfig, data: Path, name: str) -> LabelConfig:
    """prefkit label's settings for a round: the loop's source and judge options."""
    from prefkit.label import judge_label_config

    return judge_label_config(
        cfg,
        cfg.device,
        dataset=str(data),
        name=name,
        tie_margin=cfg.tie_margin,
        overwrite=True,
        quiet=cfg.quiet,
    )


def check_judge(cfg: LoopConfig) -> None:
    """Build the judge once before round 0, so that a missing --weights or an unloadable model stops the
    loop before anything is generated (each round's prefkit label builds it again)."""
    from prefkit.judges import make_judge
    from prefkit.label import judge_options, source_kind

    if source_kind(cfg.source) == "human":
        raise PrefkitError(f"--source {cfg.source}: the loop needs a judge it runs on each round's samples")
    make_judge(judge_options(label_config(cfg, Path(cfg.out), "check")))


def _train(
    cfg: LoopConfig, extra: dict, data: Path, train_out: Path, lora: Path | None, name: str, r: int
) -> dict[str, Any]:
    from prefkit.training.run import run_train

    summary = train_out / "summary.json"
    if not summary.is_file():
        settings = {
            "objective": cfg.objective,
            "max_steps": cfg.max_steps,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            # left to prefkit train (its default, or the model folder's recommendation) unless given
            **{
                k: getattr(cfg, k)
                for k in ("kl_coef", "timestep_fraction", "lora_rank")
                if getattr(cfg, k) is not None
            },
            "seed": cfg.seed + r,
            "checkpoint_every": 0,
            **extra,
        }
        run_train(
            TrainConfig(
                dataset=str(data),
                out=str(train_out),
                labels=name,
                init_lora=str(lora) if lora else None,
                resume=train_out.is_dir() and any(train_out.iterdir()),
                quiet=cfg.quiet,
                device=cfg.device,
                **settings,
            ),
            given=frozenset(settings),  # the loop's own settings are not the model folder's to change
        )
    return json.loads(summary.read_text())


def round_scores(data: Path, name: str) -> list[float]:
    return list(keyed_scores(data, name).values())


def keyed_scores(data: Path, name: str) -> dict[str, float]:
    """Sample key -> score of the round's label set, in file order."""
    from prefkit.label_sets import label_paths

    path = label_paths(data, name)["scores"]
    if not path.is_file():
        raise PrefkitError(f"{path}: no such file: the loop's --source must score samples")
    records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return {rec["key"]: rec["score"] for rec in records}


def _base_line(data: Path, base: Path, name: str) -> dict[str, Any]:
    """The base model's mean score on the round's seeds and prompts, and the paired gain of the round's
    policy over it (same sample keys = same prompt and initial noise), each with its 95 % t interval."""
    from prefkit.math.stats import mean_interval

    policy, reference = keyed_scores(data, name), keyed_scores(base, name)
    keys = [k for k in policy if k in reference]
    if not keys:
        raise PrefkitError(
            f"{base}: no sample key in common with {data}; the baseline must use the round's seeds"
        )
    b = mean_interval([reference[k] for k in keys])
    g = mean_interval([policy[k] - reference[k] for k in keys])
    return {
        "base_data": str(base),
        "base_score_mean": b["mean"],
        "base_score_low": b["low"],
        "base_score_high": b["high"],
        "gain_mean": g["mean"],
        "gain_low": g["low"],
        "gain_high": g["high"],
    }


def _record(r: int, data: Path, name: str, lora, train, train_out: Path, seconds: float) -> dict[str, Any]:
    from prefkit.math.stats import mean_interval

    scores = round_scores(data, name)
    n = len(scores)
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / max(n - 1, 1))
    ci = mean_interval(scores)
    return {
        "round": r,
        "data": str(data),
        "sampled_with": str(lora) if lora else None,
        "samples": n,
        "score_mean": mean,
        "score_std": std,
        "score_se": std / math.sqrt(n),
        "score_low": ci["low"],
        "score_high": ci["high"],
        "lora": str(train_out / "lora") if train is not None else None,
        "train": train["final"] if train is not None else None,
        "seconds": seconds,
    }


def _write_records(out: Path, records: list[dict[str, Any]]) -> None:
    from prefkit.schemas import validate

    for rec in records:
        validate(rec, "round", f"{out / 'rounds.jsonl'}, round {rec['round']}")
    atomic_write_bytes(out / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())


def plot_rewards(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Mean score per round with its 95 % interval, and (when measured) the base model's on the same
    seeds and prompts, drawn with PIL (no plotting library). A rise of the policy's line that the base
    line shares is the seeds' doing, not training's."""
    from PIL import Image, ImageDraw

    W, H, left, right, top, bottom = 640, 400, 80, 24, 40, 56
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [rec["round"] for rec in records]
    series = [("score", (31, 119, 180), "policy")]
    if all(rec.get("base_score_mean") is not None for rec in records):
        series.append(("base_score", (255, 127, 14), "base model, same seeds"))

    def band(rec, key):
        mean = rec[f"{key}_mean"]
        low, high = rec.get(f"{key}_low"), rec.get(f"{key}_high")
        return (mean, mean) if low is None or high is None else (low, high)

    values = [v for rec in records for key, _, _ in series for v in band(rec, key)]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def px(x: float) -> float:
        span = max(xs[-1] - xs[0], 1)
        return left + (x - xs[0]) / span * (W - left - right)

    def py(y: float) -> float:
        return top + (hi - y) / (hi - lo) * (H - top - bottom)

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for i in range(5):  # y ticks
        y = lo + (hi - lo) * i / 4
        d.line([left - 4, py(y), left, py(y)], fill="black")
        d.text((4, py(y) - 6), f"{y:.4g}", fill="black")
    for x in xs:
        d.line([px(x), H - bottom, px(x), H - bottom + 4], fill="black")
        d.text((px(x) - 4, H - bottom + 8), str(x), fill="black")
    d.text((W // 2 - 20, H - 22), "round", fill="black")
    d.text((left, 12), f"mean score of the round's samples (95 % interval) -- {title}", fill="black")
    for i, (key, colour, label) in enumerate(series):
        shift = 4 * i  # side by side, so the two bars stay apart
        pts = [(px(rec["round"]) + shift, py(rec[f"{key}_mean"])) for rec in records]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for rec, (x, y) in zip(records, pts, strict=True):
            low, high = band(rec, key)
            d.line([x, py(low), x, py(high)], fill=colour)
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        d.text((left + 8, top + 6 + 14 * i), label, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path
