"""``prefkit eval``: does the LoRA beat the model it was trained from, on held-out prompts?

Reads top to bottom:
1. settings: find the training run that wrote the LoRA (``OUT/config.yaml`` beside ``OUT/lora`` or
   ``OUT/checkpoint-N``), its dataset and that dataset's ``manifest.json``; take the model and the sampler
   settings from there unless given as flags; check everything. Nothing is written on bad input.
2. the judge (built from a LabelConfig exactly as ``prefkit label`` builds it), then the pipeline with the
   LoRA, loaded once.
3. per batch -- generate's batches and generate's seeds, so the tuned samples are exactly what
   ``prefkit generate --lora`` writes with the same settings -- sample with the adapters off (base), then on
   (tuned): same prompts, same seeds, so the same initial noise and per-step noise; with ``--kl`` the tuned
   chain's log-probs under the base denoiser; then score.
4. statistics (:mod:`prefkit.math.stats`), the grid, ``report.json`` and ``samples.jsonl``, written atomically.

Outcome of one sample (prompt p, sample i; base and tuned share its seed):
  scorer       d = score(tuned) - score(base): win if d > tie_margin, loss if d < -tie_margin, else tie
  pair judge   judge.compare(base, tuned) (prefkit's pairwise judges ask in both orders): "1" win,
               "0" loss, "tie" tie, None no verdict (left out of the win rate, counted)
  win rate     (wins + ties / 2) / (wins + ties + losses), with the sign test's 95 % interval (the Wilson
               interval of wins / (wins + losses), put on the win rate's scale: prefkit.math.stats)

Gold judge (``--gold``), a second judge that training never saw, on the same base and tuned images:
  gain         of a judge, tuned over base: for a scorer the mean paired score difference tuned - base
               (its units) with the paired Student t 95 % interval; for a pair judge the win rate minus
               1/2 with the sign test's interval. It went up when the interval lies above 0, down when
               below 0, else neither.
  hacking      the proxy's gain (the --source judge, normally the one training optimised) went up AND the
               gold gain went down: both intervals exclude 0, on opposite sides. ``status`` names all four
               cases: hacking, unconfirmed (proxy up, gold neither), confirmed (both up), no_proxy_gain.
  marks        a sample is marked on the grid (red border, the reasons in its caption; ``marks`` in
               samples.jsonl) when, on its own seed, it shows what the report flags: for each flagged image
               statistic, its tuned - base difference has the sign of the mean difference and exceeds the
               base images' seed-to-seed spread; and "gold" when the report flags hacking and this sample
               is a proxy win (beyond --tie-margin) and a gold loss (beyond --gold-tie-margin).

Drift, per sample:
  latent_rms   sqrt(mean((x0_tuned - x0_base)^2)) over the final latent's elements (same seed)
  pixel_mad    mean |image_tuned - image_base| over pixels and channels, in 0..255
  kl_per_step  mean over steps k of lp_tuned(k) - lp_base(k) for the TUNED chain, lp the mean over
               latent elements of the step's Gaussian log-density (as generate stores it): a Monte Carlo
               estimate of the per-step KL(tuned || base) per latent element, in nats; 0 for a LoRA that
               changes nothing
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from prefkit import __version__
from prefkit.config import EvalConfig, GenerateConfig
from prefkit.errors import PrefkitError
from prefkit.fileio import check_output_folder, jsonable, utc_timestamp
from prefkit.image_stats import compare, image_stats
from prefkit.progress import progress
from prefkit.prompts import resolve_prompts
from prefkit.runs import LORA_WEIGHTS, Origin, default_out, find_origin  # noqa: F401 - LORA_WEIGHTS: re-exported
from prefkit.shards import atomic_write_bytes, fsync_dir, json_bytes, png_bytes

FORMAT_NAME = "prefkit-eval"
FORMAT_VERSION = 1
REPORT, SAMPLES, GRID = "report.json", "samples.jsonl", "grid.png"
GRID_PROMPTS, GRID_SAMPLES = 8, 4  # grid.png: the first prompts, and the first samples of each
SAMPLER_KEYS = ("steps", "guidance", "negative_prompt", "eta", "noise_level", "height", "width")
INTERVALS = (
    "95 %: win rate (a tie counts half a win) with the sign test's interval (the Wilson score interval of "
    "wins among decisive pairs, on the win rate's scale); Student t for means"
)


# -- 1. settings --------------------------------------------------------------------------------------


def resolve_settings(cfg: EvalConfig, origin: Origin) -> tuple[dict[str, Any], dict[str, str], str]:
    """(values, where each came from, what to load as the model). Flags win over the training run, the
    training run over the defaults of ``prefkit generate`` and of the model."""
    from prefkit.families import loadable

    run: dict[str, Any] = {}
    train, manifest = origin.train or {}, origin.manifest
    if manifest is not None:
        s = manifest["settings"]
        run = {k: s.get(k) for k in SAMPLER_KEYS}
        run["model"], run["revision"] = s["model"], s.get("revision")
    if train.get("model"):  # trained on another model than the dataset's (--force) or diffusion-dpo
        if train["model"] != run.get("model"):
            run["revision"] = None
        run["model"] = train["model"]
    for key in ("guidance", "negative_prompt"):  # the policy was trained under these
        if train.get(key) is not None:
            run[key] = train[key]
    if train.get("resolution"):  # diffusion-dpo trains at this size
        run["height"] = run["width"] = train["resolution"]

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key in ("model", "revision", *SAMPLER_KEYS):
        given = getattr(cfg, key)
        if given is not None:
            values[key], origins[key] = given, "flag"
        elif run.get(key) is not None:
            values[key], origins[key] = run[key], "training run"
        else:
            values[key], origins[key] = None, "default"
    for given, other in (("eta", "noise_level"), ("noise_level", "eta")):
        if getattr(cfg, given) is not None and getattr(cfg, other) is None:  # the flag names the sampler
            values[other], origins[other] = None, "default"
    if values["model"] is None:
        raise PrefkitError(
            f"--model is required: {origin.notes[0] if origin.notes else 'the training run names no model'}; "
            "give the base model the LoRA was trained on"
        )
    # a model the manifest names by a relative path that does not resolve from here: its recorded path
    load_from = values["model"]
    if (
        origins["model"] == "training run"
        and manifest is not None
        and values["model"] == manifest["settings"]["model"]
    ):
        load_from = loadable(values["model"], manifest["model"].get("path"))
    return values, origins, load_from


def check_out(out: Path, overwrite: bool) -> None:
    hint = f"choose another --out, or pass --overwrite to replace its {REPORT}, {SAMPLES} and {GRID}"
    check_output_folder(out, allow=overwrite, hint=hint)


def training_labels(origin: Origin) -> list[dict[str, Any]] | None:
    """The meta records (``labels/NAME.meta.json``) of the label sets the LoRA was trained on; None when
    no training run was found or a meta cannot be read."""
    from prefkit.label_sets import label_sets, read_meta

    folder = origin.folder
    if folder is None or origin.train is None:
        return None
    chosen = origin.train.get("labels")
    names = [n.strip() for n in str(chosen).split(",") if n.strip()] if chosen else label_sets(folder)
    metas = []
    for name in names:
        try:
            metas.append(read_meta(folder, name))  # checked against its schema: a stranger's file
        except OSError:
            return None
    return metas


def training_source(metas: list[dict[str, Any]] | None) -> str | None:
    """The judge that labelled the LoRA's training pairs (the ``source`` of their label sets' ``metas``,
    from :func:`training_labels`), when it is one judge that eval can run again; None otherwise (human
    labels, several judges, no run found)."""
    from prefkit.label import source_kind

    sources = {m.get("source") for m in metas} if metas else set()
    if len(sources) != 1:
        return None
    source = sources.pop()
    return source if source and source_kind(source) != "human" else None


def training_tie_margin(metas: list[dict[str, Any]] | None, source: str | None) -> float | None:
    """The ``--tie-margin`` the training pairs were labelled with (label-set ``metas`` as for
    :func:`training_source`), when they were all labelled by ``source`` with one margin (a margin is in
    the units of its judge's score, so it carries over only to the same judge); None otherwise."""
    if not metas or source is None or any(m.get("source") != source for m in metas):
        return None
    margins = {m.get("tie_margin") for m in metas}
    margin = margins.pop() if len(margins) == 1 else None
    return float(margin) if isinstance(margin, (int, float)) else None


def fill_defaults(cfg: EvalConfig, origin: Origin) -> tuple[EvalConfig, list[str]]:
    """--source defaults to the judge that labelled the training pairs, and --tie-margin to the margin
    those pairs were labelled with (for that same judge; else 0); prompts default to the held-out
    shapes captions (``--prompts shapes-heldout``) when the training prompts are all shapes captions
    (the built-in tiny-shapes model's world). Each default taken is returned as a note."""
    notes = []
    metas = training_labels(origin)
    if not cfg.source:
        source = training_source(metas)
        if source:
            cfg = dataclasses.replace(cfg, source=source)
            notes.append(f"--source {source}: the judge that labelled the training pairs")
    if cfg.tie_margin is None:
        margin = training_tie_margin(metas, cfg.source)
        cfg = dataclasses.replace(cfg, tie_margin=margin or 0.0)
        if margin:
            notes.append(f"--tie-margin {margin:g}: the margin the training pairs were labelled with")
    if not cfg.prompt and not cfg.prompts and origin.manifest is not None:
        from prefkit.shapes import parse_caption

        train_prompts = origin.manifest.get("prompts") or []
        if train_prompts and all(parse_caption(p) is not None for p in train_prompts):
            cfg = dataclasses.replace(cfg, prompts="shapes-heldout")
            notes.append("--prompts shapes-heldout: colour-shape combinations the built-in model never saw")
    return cfg, notes


def validate(cfg: EvalConfig) -> None:
    for name in ("samples_per_prompt", "batch_size", "judge_batch_size"):
        if getattr(cfg, name) < 1:
            raise PrefkitError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.steps is not None and cfg.steps < 1:
        raise PrefkitError(f"--steps {cfg.steps}: must be at least 1")
    if cfg.tie_margin < 0:
        raise PrefkitError(f"--tie-margin {cfg.tie_margin}: must be >= 0")
    if not cfg.source:
        raise PrefkitError(
            "--source is required (the training pairs' judge could not be found or was human): the judge, "
            "any AI or rule source of prefkit label (jpeg, shapes, aesthetic, pickscore, hps, imagereward, llava, "
            "python:module:function)"
        )
    _check_runnable("--source", cfg.source)
    validate_gold(cfg)


def _check_runnable(flag: str, source: str) -> None:
    from prefkit.label import source_kind

    if source_kind(source) == "human":
        raise PrefkitError(
            f"{flag} {source}: eval needs a judge it can run on fresh images "
            "(jpeg, shapes, aesthetic, pickscore, llava, python:module:function), not imported human labels"
        )


GOLD_OPTIONS = ("model", "revision", "processor", "weights", "method", "template")


def gold_config(cfg: EvalConfig) -> EvalConfig:
    """``cfg`` with the gold judge in the judge's place (--gold as --source, --gold-model as --judge-model,
    --gold-revision, --gold-processor, --gold-weights, --gold-method, --gold-template, --gold-tie-margin as
    --tie-margin), so that :func:`make_eval_judge` builds it exactly as it builds the judge."""
    names = {"model": "judge_model", "revision": "judge_revision"}
    replaced = {names.get(k, k): getattr(cfg, f"gold_{k}") for k in GOLD_OPTIONS}
    return dataclasses.replace(cfg, source=cfg.gold, tie_margin=cfg.gold_tie_margin, **replaced)


def validate_gold(cfg: EvalConfig) -> None:
    if not cfg.gold:
        return
    _check_runnable("--gold", cfg.gold)
    if cfg.gold_tie_margin < 0:
        raise PrefkitError(f"--gold-tie-margin {cfg.gold_tie_margin}: must be >= 0")
    gold = gold_config(cfg)
    same = ("source", "judge_model", "judge_revision", "processor", "weights", "method", "template")
    if all(getattr(gold, k) == getattr(cfg, k) for k in same):
        raise PrefkitError(
            f"--gold {cfg.gold}: the same judge as --source with the same options; the gold judge must be "
            "one training never saw (e.g. --source jpeg --gold shapes)"
        )


def eval_device(name: str) -> torch.device:
    from prefkit.judges.common import torch_device

    return torch_device(name)


def make_eval_judge(cfg: EvalConfig, device: torch.device):
    """The judge of ``--source``, built as ``prefkit label`` builds it (its --judge-* flags renamed)."""
    from prefkit.judges import make_judge
    from prefkit.label import judge_label_config, judge_options

    return make_judge(judge_options(judge_label_config(cfg, str(device))))


# -- 3. sampling and judging --------------------------------------------------------------------------


def set_adapters(pipe, family, enabled: bool) -> None:
    """Base (adapters off) or tuned (on). With the adapters off every LoRA layer returns its base layer's
    output, so the base samples equal those of the pipeline loaded without the LoRA, bit for bit."""
    (pipe.enable_lora if enabled else pipe.disable_lora)()
    if any(not name.startswith(("unet", "transformer")) for name in pipe.get_list_adapters()):
        family.forget_prompt_encodings()  # a text-encoder LoRA: prompt encodings differ per side


def tuned_chain_logprobs_under_base(family, traj, settings) -> torch.Tensor:
    """lp of each transition of ``traj`` (sampled with the adapters on) under the current denoiser:
    float32 [B, K]. Call with the adapters off."""
    from prefkit.sampling import transition_logprob

    with torch.no_grad():
        lps = [
            transition_logprob(
                family, traj.latents[:, k], traj.latents[:, k + 1], k, traj.schedule, traj.cond, settings
            ).cpu()
            for k in range(traj.schedule.num_steps)
        ]
    return torch.stack(lps, dim=1)


def judge_batch(judge, pairwise: bool, base_images, tuned_images, prompts, batch_size: int):
    """[(score_base, score_tuned, choice, details)] per sample; choice "1" = tuned preferred.

    A scorer scores every image (its scores decide later, with the tie margin); a pair judge compares
    (base, tuned) directly."""
    from prefkit.label import score_batch

    n = len(prompts)
    if pairwise:
        out = []
        for s in range(0, n, batch_size):
            pairs = list(
                zip(
                    base_images[s : s + batch_size],
                    tuned_images[s : s + batch_size],
                    prompts[s : s + batch_size],
                    strict=True,
                )
            )
            for v in judge.compare(pairs):
                details = {k: val for k, val in v.items() if k != "choice"}
                out.append((None, None, v.get("choice"), details or None))
        if len(out) != n:
            raise PrefkitError(f"the judge returned {len(out)} verdicts for {n} pairs")
        return out
    items = [(f"base {j}", im, p) for j, (im, p) in enumerate(zip(base_images, prompts, strict=True))]
    items += [(f"tuned {j}", im, p) for j, (im, p) in enumerate(zip(tuned_images, prompts, strict=True))]
    scores: dict[str, float] = {}
    for s in range(0, len(items), batch_size):
        score_batch(judge, items[s : s + batch_size], scores)
    return [(scores[f"base {j}"], scores[f"tuned {j}"], None, None) for j in range(n)]


def outcome(score_base, score_tuned, choice, tie_margin: float) -> str:
    """win / tie / loss of the tuned model for one sample, or none (a pair judge without a verdict)."""
    if score_base is not None:
        d = score_tuned - score_base
        return "win" if d > tie_margin else "loss" if d < -tie_margin else "tie"
    return {"1": "win", "0": "loss", "tie": "tie"}.get(choice, "none")


def _pixel_mad(a, b) -> float:
    import numpy as np

    return float(
        np.abs(np.asarray(a.convert("RGB"), np.float64) - np.asarray(b.convert("RGB"), np.float64)).mean()
    )


# -- 4. statistics and outputs ------------------------------------------------------------------------


def judged(outcomes: list[str], base: list[float] | None, tuned: list[float] | None) -> dict[str, Any]:
    """What one judge found over the samples: counts of its outcomes, the win rate, and (a scorer, with
    ``base`` and ``tuned`` scores) the mean scores of both sides and of their paired difference."""
    from prefkit.math.stats import mean_interval, win_rate

    count = {o: sum(x == o for x in outcomes) for o in ("win", "tie", "loss", "none")}
    out: dict[str, Any] = {
        "pairs": len(outcomes),
        "wins": count["win"],
        "ties": count["tie"],
        "losses": count["loss"],
        "no_verdict": count["none"],
        "win_rate": win_rate(count["win"], count["tie"], count["loss"]),
        "scores": None,
    }
    if base is not None and tuned is not None:
        out["scores"] = {
            "base": mean_interval(base),
            "tuned": mean_interval(tuned),
            "difference": mean_interval([t - b for t, b in zip(tuned, base, strict=True)]),
        }
    return out


def summarize(rows: list[dict[str, Any]], scored: bool, kl: bool) -> dict[str, Any]:
    """The report's summary of the per-sample rows (see the module docstring)."""
    from prefkit.math.stats import mean_interval

    summary = judged(
        [r["outcome"] for r in rows],
        [r["score_base"] for r in rows] if scored else None,
        [r["score_tuned"] for r in rows] if scored else None,
    )
    summary["intervals"] = INTERVALS
    summary["drift"] = {
        "latent_rms": mean_interval([r["latent_rms"] for r in rows]),
        "latent_rms_base": math.fsum(r["latent_rms_base"] for r in rows) / len(rows),
        "pixel_mad": mean_interval([r["pixel_mad"] for r in rows]),
        "kl_per_step": mean_interval([r["kl_per_step"] for r in rows]) if kl else None,
    }
    return summary


def gain(found: dict[str, Any]) -> dict[str, Any]:
    """A judge's gain, tuned over base, from :func:`judged`'s ``found`` (module docstring): {kind, n, mean,
    low, high, direction}; direction "up" when the 95 % interval lies above 0, "down" when below, else
    "none" (also without an interval)."""
    if found["scores"] is not None:
        d = found["scores"]["difference"]
        kind, n, mean, low, high = "score_difference", d["n"], d["mean"], d["low"], d["high"]
    else:
        wr = found["win_rate"]
        shift = lambda v: None if v is None else v - 0.5  # noqa: E731
        kind, n = "win_rate_minus_half", found["wins"] + found["ties"] + found["losses"]
        mean, low, high = shift(wr["value"]), shift(wr["low"]), shift(wr["high"])
    direction = "up" if low is not None and low > 0 else "down" if high is not None and high < 0 else "none"
    return {"kind": kind, "n": n, "mean": mean, "low": low, "high": high, "direction": direction}


GOLD_STATUS = {
    "hacking": "the proxy rose and the gold judge fell, both significantly: reward hacking",
    "unconfirmed": "the proxy rose; the gold judge did not move significantly either way",
    "confirmed": "the proxy and the gold judge both rose",
    "no_proxy_gain": "the proxy did not rise significantly",
}
GOLD_DEFINITION = (
    "gain: a scorer's mean paired score difference tuned - base with its 95 % Student t interval, a pair "
    "judge's win rate - 1/2 with the sign test's interval; up / down: the interval lies above / below 0. "
    "hacking: the proxy's gain (the --source judge) is up and the gold gain is down."
)


def gold_status(proxy: dict[str, Any], gold: dict[str, Any]) -> str:
    """hacking, unconfirmed, confirmed or no_proxy_gain (GOLD_STATUS) from the two :func:`gain` records."""
    if proxy["direction"] != "up":
        return "no_proxy_gain"
    return {"down": "hacking", "up": "confirmed"}.get(gold["direction"], "unconfirmed")


def gold_summary(rows: list[dict[str, Any]], proxy: dict[str, Any], judge: dict[str, Any]) -> dict[str, Any]:
    """summary.gold: what the gold judge (``judge``: its source, kind, tie margin, info) found on the rows'
    gold_* fields, both gains (``proxy``: the summary of the --source judge, as :func:`judged`) and the
    verdict."""
    scored = judge["kind"] == "scorer"
    found = judged(
        [r["gold_outcome"] for r in rows],
        [r["gold_base"] for r in rows] if scored else None,
        [r["gold_tuned"] for r in rows] if scored else None,
    )
    proxy_gain, gold_gain = gain(proxy), gain(found)
    status = gold_status(proxy_gain, gold_gain)
    return {
        **judge,
        **found,
        "proxy_gain": proxy_gain,
        "gold_gain": gold_gain,
        "status": status,
        "hacking": status == "hacking",
        "definition": GOLD_DEFINITION,
    }


MARK_NAMES = {  # the grid caption's short names of the marks
    "saturation": "sat",
    "colour_entropy": "entropy",
    "dark_fraction": "dark",
    "high_frequency": "hf",
    "jpeg_bits": "jpeg",
    "gold": "gold",
}


def sample_marks(
    base_stats: dict[str, float],
    tuned_stats: dict[str, float],
    image_stats_summary: dict[str, Any],
    proxy_outcome: str,
    gold_outcome: str | None,
    hacking: bool,
) -> list[str]:
    """Why one sample is marked on the grid (module docstring): the flagged statistics it moved, on its own
    seed, beyond the base spread in the direction of the mean move; "gold" when the report flags hacking
    and the sample is a proxy win and a gold loss."""
    marks = []
    for name in image_stats_summary["flagged"]:
        s = image_stats_summary[name]
        d = tuned_stats[name] - base_stats[name]
        if math.copysign(1.0, s["difference"]["mean"]) * d > s["base_spread"]:
            marks.append(name)
    if hacking and proxy_outcome == "win" and gold_outcome == "loss":
        marks.append("gold")
    return marks


def grid_image(kept: dict[tuple[int, int], tuple], prompts: list[str], rows_by_key: dict, scored: bool):
    """grid.png: per prompt (the first GRID_PROMPTS) a row of base | tuned pairs (its first GRID_SAMPLES
    seeds), captioned with the scores; the tuned caption is green for a win, red for a loss. A tuned image
    whose row has ``marks`` (:func:`sample_marks`) gets a red border and the marks' short names in its
    caption, with a legend footer. A footer says how many prompts are not shown."""
    from prefkit.grid import MARK_COLOUR, image_grid

    colour = {"win": (0, 128, 0), "loss": (192, 0, 0), "tie": (96, 96, 96), "none": (96, 96, 96)}
    groups = sorted({g for g, _ in kept})
    rows, titles, captions, marked = [], [], [], []
    for g in groups:
        images, caps, marks = [], [], []
        for g2, i in sorted(k for k in kept if k[0] == g):
            base, tuned = kept[(g2, i)]
            r = rows_by_key[(g2, i)]
            images += [base, tuned]
            tuned_cap = (
                f"tuned {r['score_tuned']:.4g}" if scored else f"tuned: {r['outcome']}",
                colour[r["outcome"]],
            )
            if r.get("marks"):
                text = tuned_cap[0] + " !" + ",".join(MARK_NAMES[m] for m in r["marks"])
                tuned_cap = (text, MARK_COLOUR)
            base_cap = f"base {r['score_base']:.4g}" if scored else "base"
            caps += [(base_cap, "black"), tuned_cap]
            marks += [False, bool(r.get("marks"))]
        rows.append(images)
        titles.append(f"{g}: {prompts[g]}")
        captions.append(caps)
        marked.append(marks)
    more = len(prompts) - len(groups)
    left_out = (
        f"{more} more prompt(s) not shown: grid.png shows the first {len(groups)}" if more > 0 else None
    )
    present = {
        m for r in rows_by_key.values() if (r["group"], r["index"]) in kept for m in r.get("marks") or ()
    }
    legend = None
    if present:
        legend = "red border !: " + "; ".join(
            "gold = the gold judge fell, the proxy rose"
            if m == "gold"
            else f"{MARK_NAMES[m]} = {m} moved beyond the base spread"
            for m in MARK_NAMES
            if m in present
        )
    return image_grid(rows, titles, captions, left_out=left_out, marked=marked, legend=legend)


def write_outputs(out: Path, files: dict[str, bytes]) -> None:
    """All files or none: a new (or empty) --out is built beside it and renamed into place; with
    --overwrite each file is replaced atomically. A full disk or read-only folder: one error naming --out."""
    from prefkit.fileio import writing

    with writing(out):
        _write_outputs(out, files)


def _write_outputs(out: Path, files: dict[str, bytes]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir() and any(out.iterdir()):
        for name, data in files.items():
            atomic_write_bytes(out / name, data)
        return
    stage = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        for name, data in files.items():
            atomic_write_bytes(stage / name, data)
        os.replace(stage, out)  # rename(2) replaces an empty folder
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    fsync_dir(out.parent)


# -- the stage ----------------------------------------------------------------------------------------


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate ``cfg.lora`` against its base model; writes report.json, samples.jsonl and grid.png in
    ``--out`` and returns the report."""
    from prefkit.generate import sample_batch, setup, shard_batches
    from prefkit.judges import is_pair_judge
    from prefkit.schemas import validate as validate_record

    started = time.perf_counter()
    # 1. settings: everything that can be checked without loading a model --------------------------------
    origin = find_origin(cfg.lora)
    cfg, defaulted = fill_defaults(cfg, origin)
    if origin.missing_dataset and (not cfg.source or not (cfg.prompt or cfg.prompts)):
        # the judge and the prompts default to the training run's: say why they could not be found first
        raise PrefkitError(
            f"{origin.missing_dataset}: give --source and --prompt/--prompts, or run from the folder "
            "training ran in"
        )
    validate(cfg)
    out = Path(cfg.out).expanduser() if cfg.out else default_out(origin.lora)
    check_out(out, cfg.overwrite)
    prompts = resolve_prompts(cfg.prompt, cfg.prompts)
    values, origins, load_from = resolve_settings(cfg, origin)
    device = eval_device(cfg.device)
    notes = list(origin.notes) + defaulted
    if origin.manifest is not None:
        train_prompts = set(origin.manifest.get("prompts") or [])
        shared = sum(p in train_prompts for p in prompts)
        if shared:
            notes.append(f"{shared} of the {len(prompts)} prompts are training prompts (not held out)")
        if origin.manifest["settings"].get("seed") == cfg.seed and shared:
            notes.append(f"--seed {cfg.seed} is the training dataset's seed: some samples repeat its noise")

    # 2. the judge, then the pipeline with the LoRA (once) -----------------------------------------------
    judge = make_eval_judge(cfg, device)
    pairwise = is_pair_judge(judge)
    gold_judge = None
    if cfg.gold:
        try:
            gold_judge = make_eval_judge(gold_config(cfg), device)
        except PrefkitError as e:
            raise PrefkitError(f"the gold judge (--gold and its --gold-* options): {e}") from e
    gold_pairwise = gold_judge is not None and is_pair_judge(gold_judge)
    if cfg.gold and cfg.gold in {m.get("source") for m in training_labels(origin) or []}:
        notes.append(f"--gold {cfg.gold} also labelled the training pairs: it is no judge training never saw")
    gcfg = GenerateConfig(
        model=load_from,
        revision=values["revision"],
        lora=str(origin.lora),
        prompt=prompts,
        samples_per_prompt=cfg.samples_per_prompt,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        dtype=cfg.dtype,
        **{k: values[k] for k in SAMPLER_KEYS if values[k] is not None},
    )
    su = setup(gcfg, device)
    pipe, family, settings, gcfg = su.pipe, su.family, su.settings, su.cfg
    for key in SAMPLER_KEYS:  # what setup filled in from generate's and the model's defaults
        values[key] = getattr(gcfg, key)

    # 3. base and tuned, batch by batch; judged as they come -----------------------------------------------
    num_groups = len(prompts)
    batches = [
        b
        for j in range(math.ceil(num_groups / gcfg.groups_per_shard))
        for b in shard_batches(j, gcfg, num_groups)
    ]
    rows: list[dict[str, Any]] = []
    kept: dict[tuple[int, int], tuple] = {}
    stats_base: list[dict[str, float]] = []  # image statistics (prefkit.image_stats), row by row
    stats_tuned: list[dict[str, float]] = []
    seconds = {"sampling": 0.0, "kl": 0.0, "judging": 0.0}
    total = num_groups * cfg.samples_per_prompt
    with progress(not cfg.quiet, total, "eval", "pairs") as advance:
        for batch in batches:
            t0 = time.perf_counter()
            set_adapters(pipe, family, False)
            seeds, base = sample_batch(family, settings, gcfg, prompts, batch)
            set_adapters(pipe, family, True)
            _, tuned = sample_batch(family, settings, gcfg, prompts, batch)
            t1 = time.perf_counter()
            kl = None
            if cfg.kl:
                set_adapters(pipe, family, False)
                kl = (tuned.logprobs - tuned_chain_logprobs_under_base(family, tuned, settings)).mean(dim=1)
                set_adapters(pipe, family, True)
            t2 = time.perf_counter()
            batch_prompts = [prompts[g] for g, _ in batch]
            verdicts = judge_batch(
                judge, pairwise, base.images, tuned.images, batch_prompts, cfg.judge_batch_size
            )
            gold = [(None, None, None, None)] * len(batch)
            if gold_judge is not None:
                try:
                    gold = judge_batch(
                        gold_judge,
                        gold_pairwise,
                        base.images,
                        tuned.images,
                        batch_prompts,
                        cfg.judge_batch_size,
                    )
                except PrefkitError as e:
                    raise PrefkitError(f"the gold judge (--gold {cfg.gold}): {e}") from e
            seconds["sampling"] += t1 - t0
            seconds["kl"] += t2 - t1
            seconds["judging"] += time.perf_counter() - t2
            x0_base, x0_tuned = base.latents[:, -1], tuned.latents[:, -1]  # [B, C, h, w]
            rms = (x0_tuned - x0_base).pow(2).flatten(1).mean(1).sqrt()
            rms_base = x0_base.pow(2).flatten(1).mean(1).sqrt()
            for b, (g, i) in enumerate(batch):
                sb, st, choice, details = verdicts[b]
                gb, gt, gchoice, _ = gold[b]
                rows.append(
                    {
                        "prompt": prompts[g],
                        "group": g,
                        "index": i,
                        "seed": seeds[b][0],
                        "init_noise_seed": seeds[b][1],
                        "score_base": sb,
                        "score_tuned": st,
                        "choice": choice if pairwise else None,
                        "outcome": outcome(sb, st, choice, cfg.tie_margin),
                        "latent_rms": float(rms[b]),
                        "latent_rms_base": float(rms_base[b]),
                        "pixel_mad": _pixel_mad(base.images[b], tuned.images[b]),
                        "kl_per_step": None if kl is None else float(kl[b]),
                        "judge": details,
                        "gold_base": gb,
                        "gold_tuned": gt,
                        "gold_outcome": None
                        if gold_judge is None
                        else outcome(gb, gt, gchoice, cfg.gold_tie_margin),
                        "marks": [],
                    }
                )
                stats_base.append(image_stats(base.images[b]))
                stats_tuned.append(image_stats(tuned.images[b]))
                if g < GRID_PROMPTS and i < GRID_SAMPLES:
                    kept[(g, i)] = (base.images[b], tuned.images[b])
            wins = sum(r["outcome"] == "win" for r in rows) + sum(r["outcome"] == "tie" for r in rows) / 2
            decided = sum(r["outcome"] != "none" for r in rows)
            advance(len(batch), f"win rate {wins / decided:.2f}" if decided else "")

    # 4. statistics and outputs --------------------------------------------------------------------------
    summary = summarize(rows, scored=not pairwise, kl=cfg.kl)
    summary["image_stats"] = compare(stats_base, stats_tuned, [r["group"] for r in rows])
    summary["gold"] = None
    if gold_judge is not None:
        gold_info = {
            "source": cfg.gold,
            "kind": "pairwise" if gold_pairwise else "scorer",
            "tie_margin": None if gold_pairwise else cfg.gold_tie_margin,
            "info": gold_judge.info(),
        }
        summary["gold"] = gold_summary(rows, summary, gold_info)
        if summary["gold"]["hacking"]:
            notes.append(
                f"reward hacking: the proxy ({cfg.source}) rose while the gold judge ({cfg.gold}) fell, "
                "both beyond their 95 % intervals; look at the grid's marked samples"
            )
    hacking = bool(summary["gold"] and summary["gold"]["hacking"])
    for row, sb_, st_ in zip(rows, stats_base, stats_tuned, strict=True):
        row["marks"] = sample_marks(
            sb_, st_, summary["image_stats"], row["outcome"], row["gold_outcome"], hacking
        )
    summary["marked"] = sum(bool(r["marks"]) for r in rows)
    if summary["image_stats"]["flagged"]:
        notes.append(
            "image statistics moved beyond the base model's seed-to-seed spread (possible reward hacking; "
            "look at the grid): " + ", ".join(summary["image_stats"]["flagged"])
        )
    if summary["no_verdict"]:
        notes.append(f"{summary['no_verdict']} pair(s) without a verdict are left out of the win rate")
    report = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "prefkit_version": __version__,
        "created_at": utc_timestamp(),
        "lora": str(origin.lora),
        "training_run": str(origin.run) if origin.run else None,
        "dataset": origin.dataset,
        "model": {
            "id": values["model"],
            "loaded_from": load_from,
            "revision": values["revision"],
            "family": family.name,
            "pipeline_class": type(pipe).__name__,
            "dtype": gcfg.dtype,
            "device": str(device),
        },
        "settings": {
            **{k: values[k] for k in SAMPLER_KEYS},
            "samples_per_prompt": cfg.samples_per_prompt,
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "prompts": len(prompts),
        },
        "settings_from": {k: origins[k] for k in ("model", "revision", *SAMPLER_KEYS)},
        "judge": {
            "source": cfg.source,
            "kind": "pairwise" if pairwise else "scorer",
            "tie_margin": None if pairwise else cfg.tie_margin,
            "info": judge.info(),
        },
        "prompts": prompts,
        "summary": summary,
        "notes": notes,
        "seconds": {
            **{k: round(v, 3) for k, v in seconds.items()},
            "total": round(time.perf_counter() - started, 3),
        },
        "files": {"samples": SAMPLES, "grid": GRID},
        "config": cfg.to_dict(),
    }
    report = jsonable(report)
    validate_record(report, "eval", REPORT)
    for row in rows:
        validate_record(row, "eval_sample", SAMPLES)
    grid = grid_image(kept, prompts, {(r["group"], r["index"]): r for r in rows}, scored=not pairwise)
    write_outputs(
        out,
        {
            SAMPLES: b"".join(json_bytes(r) + b"\n" for r in rows),
            GRID: png_bytes(grid),
            REPORT: json_bytes(report),
        },
    )
    report["out"] = str(out)  # for the caller; not part of the file
    return report


def gain_text(g: dict[str, Any]) -> str:
    """A :func:`gain` as 'mean [low, high]' with its kind ('score' or 'win rate - 1/2')."""
    unit = "score" if g["kind"] == "score_difference" else "win rate - 1/2"
    if g["mean"] is None:
        return "-"
    if g["low"] is None:
        return f"{g['mean']:+.4g} ({unit})"
    return f"{g['mean']:+.4g}  [{g['low']:+.4g}, {g['high']:+.4g}] ({unit}, {g['direction']})"


def print_summary(report: dict[str, Any]) -> None:
    """The summary as a rich table (what `prefkit eval` prints)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    s = report["summary"]
    fmt = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731

    def interval(m: dict) -> str:
        if m["mean"] is None:
            return "-"
        if m["low"] is None:
            return fmt(m["mean"], 4)
        return f"{m['mean']:.4g}  [{m['low']:.4g}, {m['high']:.4g}]"

    table = Table(title=escape(f"{report['lora']} vs its base model, judged by {report['judge']['source']}"))
    table.add_column("")
    table.add_column("value (95 % interval)", overflow="fold")
    for label, wr in (
        ("win rate (tuned)", s["win_rate"]),
        ("wins / (wins + losses)", s["win_rate"]["decisive"]),
    ):
        text = "-" if wr["value"] is None else f"{wr['value']:.3f}"
        if wr["low"] is not None:
            text += f"  [{wr['low']:.3f}, {wr['high']:.3f}]"
        table.add_row(label, text)
    table.add_row(
        "wins / ties / losses",
        f"{s['wins']} / {s['ties']} / {s['losses']}"
        + (f"  ({s['no_verdict']} without verdict)" if s["no_verdict"] else ""),
    )
    if s["scores"] is not None:
        for side in ("base", "tuned", "difference"):
            table.add_row(
                f"score {side}" if side != "difference" else "score tuned - base", interval(s["scores"][side])
            )
    d = s["drift"]
    table.add_row(
        "latent RMS distance", interval(d["latent_rms"]) + f"  (base x0 RMS {d['latent_rms_base']:.3g})"
    )
    table.add_row("pixel mean abs. diff. (0-255)", interval(d["pixel_mad"]))
    if d["kl_per_step"] is not None:
        table.add_row("KL(tuned || base) per step", interval(d["kl_per_step"]))
    g = s.get("gold")
    if g is not None:
        for label, key in (
            (f"proxy gain ({report['judge']['source']})", "proxy_gain"),
            (f"gold gain ({g['source']})", "gold_gain"),
        ):
            table.add_row(escape(label), gain_text(g[key]))
        status = GOLD_STATUS[g["status"]]
        table.add_row("gold verdict", f"[bold red]{status}[/]" if g["hacking"] else escape(status))
    flagged = s["image_stats"]["flagged"]
    if flagged:
        table.add_row("image statistics flagged", "[red]" + escape(", ".join(flagged)) + "[/]")
    console = Console()
    console.print(table)
    if g is not None and g["hacking"]:
        console.print(
            f"[bold red]REWARD HACKING: the proxy {escape(report['judge']['source'])} rose while the gold "
            f"judge {escape(g['source'])} fell ({s.get('marked', 0)} sample(s) marked in grid.png)[/]",
            highlight=False,
        )
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
