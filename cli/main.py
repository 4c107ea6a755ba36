"""The ``prefkit`` command line: thin Typer commands that forward to one library call each.

Installed as ``prefkit.cli`` (the repository's cli/ folder is mapped into the prefkit package), never as
a top-level ``cli`` module. Each command's options are the fields of its config class (prefkit.config),
made by ``prefkit.cli.builder.config_command``: a flag is declared once, as a field. Heavy imports (torch,
diffusers) happen inside the commands, so ``prefkit --help`` answers at once.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer

from prefkit.cli.builder import Invocation, config_command
from prefkit.config import (
    AnnotateConfig,
    BenchConfig,
    EvalConfig,
    GenerateConfig,
    LabelConfig,
    LoopConfig,
    PublishConfig,
)
from prefkit.training.config import TrainConfig

app = typer.Typer(
    name="prefkit",
    help="Preference datasets and DPO training for text-to-image diffusion and flow-matching models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _run_stage(args: Invocation, module: str, function: str, pass_given: bool = False):
    """Resolve the config (defaults < --config < flags) and run one library stage; bad input exits 2.
    ``pass_given``: the stage also takes the names of the settings the user gave (``given=``)."""
    import importlib

    from prefkit.errors import PrefkitError
    from prefkit.fileio import fs_error

    try:
        cfg = args.resolve()
        run = getattr(importlib.import_module(module), function)
        return cfg, (run(cfg, given=args.given()) if pass_given else run(cfg))
    except PrefkitError as exc:
        _fail(exc)
    except Exception as exc:
        # a full disk or read-only folder met outside prefkit.fileio's writers (a mkdir, a library's own
        # write): the same one line, naming the file the OS named
        err = fs_error(exc)
        if err is None:
            raise
        _fail(err)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _fail(exc: Exception) -> None:
    from rich.console import Console
    from rich.markup import escape

    # escaped: a path such as "runs/[v2]/prompts.txt" in the message would otherwise be read as markup and vanish
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@config_command(app, GenerateConfig)
def generate(args: Invocation) -> None:
    """Sample images and write trajectory shards (latent chain, timesteps, per-step log-probs, PNG, metadata)."""
    cfg, manifest = _run_stage(args, "prefkit.generate", "run_generate")
    if not cfg.quiet and _is_main_process():
        counts = manifest["counts"]
        typer.echo(
            f"wrote {counts['samples']} trajectories in {counts['groups']} prompt groups, "
            f"{counts['shards']} shard(s), to {cfg.out} (preview: {Path(cfg.out) / 'preview.png'})"
        )


# `prefkit label stats DATASET`: DATASET is then the second positional argument
_STATS_DATASET = inspect.Parameter(
    "stats_dataset",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        str | None,
        typer.Argument(
            help="With `stats` or `agreement` as the first argument: the dataset folder.",
            show_default=False,
            metavar="STATS_DATASET",
        ),
    ],
)


_AGREEMENT = [
    inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None, typer.Option(f"--{name}", help=text, show_default=False, rich_help_panel="Agreement")
        ],
    )
    for name, text in (
        ("judge", "With `agreement`: the label set of the judge to check (e.g. shapes, pickscore)."),
        ("against", "With `agreement`: the label set to check it against (e.g. human votes)."),
    )
]


@config_command(
    app,
    LabelConfig,
    extra=[_STATS_DATASET, *_AGREEMENT],
    overrides={
        "dataset": {
            "help": "Dataset folder; or `stats` then the folder for a summary table; or `agreement` then the "
            "folder, with --judge A --against B"
        }
    },
)
def label(args: Invocation) -> None:
    """Label pairs within prompt groups: import human labels (--source human --input FILE) or run a judge
    (--source jpeg|aesthetic|pickscore|hps|imagereward|llava|python:module:function). `prefkit label stats DATASET` summarises;
    `prefkit label agreement DATASET --judge A --against B` measures a judge against other labels."""
    from prefkit.errors import PrefkitError

    dataset, stats_dataset = args.values["dataset"], args.extra["stats_dataset"]
    try:
        if dataset == "agreement":
            judge, against = args.extra["judge"], args.extra["against"]
            if stats_dataset is None or not judge or not against:
                raise PrefkitError("usage: prefkit label agreement DATASET --judge NAME --against NAME")
            from prefkit.agreement import agreement, print_agreement

            print_agreement(agreement(Path(stats_dataset), judge, against))
            return
        if args.extra["judge"] or args.extra["against"]:
            raise PrefkitError("--judge and --against go with `prefkit label agreement DATASET`")
        if dataset == "stats":
            if stats_dataset is None:
                raise PrefkitError("usage: prefkit label stats DATASET")
            from prefkit.label import print_stats

            print_stats(Path(stats_dataset))
            return
        if stats_dataset is not None:
            raise PrefkitError(f"unexpected argument {stats_dataset!r}; options start with --")
    except PrefkitError as exc:
        _fail(exc)
    cfg, meta = _run_stage(args, "prefkit.label", "run_label")
    if not cfg.quiet:
        _print_label_set(meta, cfg.dataset)


def _print_label_set(meta: dict, dataset: str) -> None:
    c = meta["counts"]
    ag = meta["agreement"]
    extra = ""
    if ag["percent_agreement"] is not None:
        extra = (
            f"; agreement {ag['percent_agreement']:.1%}, Krippendorff's alpha {ag['krippendorff_alpha']:.3f}"
        )
    typer.echo(
        f"label set {meta['name']!r}: {c['pairs']} pairs ({c['decided']} decided, {c['ties']} ties, "
        f"{c['unlabelled']} without verdict), {c['votes']} votes{extra} -> "
        f"{Path(dataset) / 'labels' / (meta['name'] + '.jsonl')}"
    )


@config_command(app, TrainConfig)
def train(args: Invocation) -> None:
    """Train a LoRA with offline D3PO, dense-reward DPO or Diffusion-DPO (final image pairs) against the
    frozen base model (adapters off), or with DDPO / TDPO on a scorer's per-sample scores."""
    cfg, last = _run_stage(args, "prefkit.training.run", "run_train", pass_given=True)
    if not cfg.quiet and _is_main_process():
        # the mean over the last steps, not the last micro-batch's numbers (a few pairs swing widely)
        recent = last.get("recent") or last
        shown = (
            f"accuracy {recent['accuracy']:.2f}"
            if "accuracy" in recent
            else f"clipfrac {recent['clipfrac']:.2f}, approx_kl {recent['approx_kl']:.2e}"
        )
        window = (
            f"mean of steps {recent['first_step']}-{recent['last_step']}"
            if "first_step" in recent
            else f"step {last['step']}"
        )
        typer.echo(
            f"trained {last['step']} steps; {window}: loss {recent['loss']:.4f}, {shown}; "
            + (f"{last['ties_skipped']} ties dropped; " if "ties_skipped" in last else "")
            + _memory_words(last.get("memory"))
            + f"LoRA in {Path(cfg.out) / 'lora'} (pipe.load_lora_weights), metrics in {Path(cfg.out) / 'metrics.jsonl'}"
        )
    if last.get("hub") and _is_main_process():
        typer.echo(f"published {last['hub']}")


def _memory_words(memory: dict | None) -> str:
    """The peak memory of the optimizer steps (and of loading, where it was measured apart)."""
    if not memory:
        return ""
    gpu = "cuda" in memory["measure"]
    what = "peak GPU memory" if gpu else "peak memory"
    loading = (
        f" ({memory['before_mib']:,.0f} MiB while loading)"
        if memory["reset"] and memory["before_mib"]
        else ""
    )
    return f"{what} {memory['during_mib']:,.0f} MiB in the steps{loading}; "


@config_command(app, EvalConfig, name="eval")
def eval_(args: Invocation) -> None:
    """Compare base and base + LoRA on held-out prompts with the same seeds, scored by any judge of
    prefkit label: win rate with a 95% interval, mean scores, drift; writes report.json, samples.jsonl,
    grid.png."""
    cfg, report = _run_stage(args, "prefkit.evaluate", "run_eval")
    if not cfg.quiet:
        from prefkit.evaluate import print_summary

        print_summary(report)
        typer.echo(f"wrote {Path(report['out']) / 'report.json'}, samples.jsonl and grid.png")


@config_command(app, LoopConfig)
def loop(args: Invocation) -> None:
    """Rounds of generate (current LoRA) -> label (a scorer) -> train (from that LoRA): OUT/round-NNN/,
    rounds.jsonl with the mean score of every round's fresh samples, and rewards.png."""
    cfg, records = _run_stage(args, "prefkit.loop", "run_loop")
    if not cfg.quiet:
        for rec in records:
            trained = f"-> trained {rec['lora']}" if rec["lora"] else "(measured only)"
            typer.echo(
                f"round {rec['round']}: mean score {rec['score_mean']:.4f} +- {rec['score_se']:.4f} "
                f"({rec['samples']} samples) {trained}"
            )
        typer.echo(f"rounds in {Path(cfg.out) / 'rounds.jsonl'}, plot {Path(cfg.out) / 'rewards.png'}")


@config_command(app, BenchConfig, config_file=False)
def bench(args: Invocation) -> None:
    """Measure prefkit against its baselines, as ratios taken in the same run. --model also takes the
    real-size random-weight models sd15-random, sd3-medium-random and sdxl-random (built on first use;
    meant for --device cuda)."""
    import json

    from prefkit.bench import print_figures, run_bench, run_gpu_bench
    from prefkit.errors import PrefkitError
    from prefkit.fileio import atomic_write_bytes

    cfg = args.resolve()
    if cfg.what not in ("generate", "train", "all", "gpu"):
        _fail(PrefkitError(f"bench {cfg.what!r}: choose generate, train, all or gpu"))
    json_out = Path(cfg.json_out) if cfg.json_out is not None else None
    if cfg.what == "gpu":
        out = json_out or Path("bench-gpu.json")

        def show(entry, figures):
            typer.echo(
                f"{entry['model']}, {entry['height']} px, {entry['steps']} steps, batch {entry['batch_size']}:"
            )
            print_figures(figures)

        try:
            report = run_gpu_bench(cfg.dry_run, cfg.repeats, on_figures=show)
            atomic_write_bytes(out, json.dumps(report, indent=2).encode())
        except PrefkitError as exc:
            _fail(exc)
        typer.echo(f"wrote {out}")
        return
    if cfg.device not in ("cpu", "cuda"):
        _fail(PrefkitError(f"--device {cfg.device}: choose cpu or cuda"))
    if min(cfg.steps, cfg.batch_size, cfg.repeats) < 1:
        _fail(PrefkitError("--steps, --batch-size and --repeats must be at least 1"))
    if cfg.dtype not in ("auto", "float32", "float16", "bfloat16"):
        _fail(PrefkitError(f"--dtype {cfg.dtype}: choose auto, float32, float16 or bfloat16"))
    try:
        figures = run_bench(
            cfg.what,
            cfg.model,
            cfg.device,
            cfg.steps,
            cfg.batch_size,
            cfg.repeats,
            cfg.dtype,
            cfg.height,
            cfg.width,
        )
    except PrefkitError as exc:
        _fail(exc)
    print_figures(figures)
    if json_out is not None:
        try:
            atomic_write_bytes(json_out, json.dumps([f.summary() for f in figures], indent=2).encode())
        except PrefkitError as exc:
            _fail(exc)


@app.command()
def env(
    json_out: Annotated[bool, typer.Option("--json", help="Print it as JSON.", metavar="")] = False,
) -> None:
    """Print what prefkit runs with here: versions (prefkit, torch, CUDA, diffusers ...), the CPU and
    GPUs, bfloat16 support, installed trackers; paste it into a bug report."""
    import json

    from prefkit.environment import environment

    info = environment()
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    libs = info.pop("libraries")
    trackers = info.pop("trackers")
    for key, value in info.items():
        typer.echo(f"{key:15} {(', '.join(value) or 'none') if isinstance(value, list) else value}")
    for key, value in libs.items():
        if key not in info:
            typer.echo(f"{key:15} {value or 'not installed'}")
    installed = [t for t, ok in trackers.items() if ok]
    typer.echo(f"{'trackers':15} {', '.join(installed) or 'none'} (pip install 'prefkit[trackers]')")


@app.command()
def version() -> None:
    """Print prefkit's version."""
    from prefkit import __version__

    typer.echo(__version__)


@config_command(app, AnnotateConfig)
def annotate(args: Invocation) -> None:
    """Serve a page where people label pairs (click an image or keys 1 / 2, 3 tie, s skip, u undo; hold or
    z to zoom); votes go to DATASET/annotations.sqlite with --question. --export NAME writes them as a
    label set."""
    cfg, result = _run_stage(args, "prefkit.annotate.serve", "run_annotate")
    if cfg.export is not None and not cfg.quiet:
        _print_label_set(result, cfg.dataset)
    elif cfg.export is None:
        typer.echo(f"stopped: {result['votes']} votes from {result['annotators']} annotator(s) saved")


@config_command(app, PublishConfig)
def publish(args: Invocation) -> None:
    """Publish a dataset and a label set as a Hub dataset: Pick-a-Pic pairs (parquet), trajectory shards, a
    dataset card; or with --lora OUT a trained LoRA as a Hub model with a model card. Built in --staging,
    then uploaded (--dry-run: built and listed, no network)."""
    cfg, summary = _run_stage(args, "prefkit.publish", "run_publish")
    if not cfg.quiet:
        from prefkit.publish import print_listing

        print_listing(summary)
    _print_notes(summary.get("notes", []))
    if summary["uploaded"]:
        typer.echo(f"published {summary['url']}")


def _print_notes(notes: list[str]) -> None:
    from prefkit.progress import note

    for text in notes:
        note(True, text)


def main() -> None:
    app(prog_name="prefkit")


if __name__ == "__main__":
    sys.exit(main())
