"""The ``prefkit`` command line: thin Typer commands that forward to one library call each.

Installed as ``prefkit.cli`` (the repository's cli/ folder is mapped into the prefkit package), never as
a top-level ``cli`` module. Heavy imports (torch, diffusers) happen inside the commands, so
``prefkit --help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from prefkit.config import EvalConfig, GenerateConfig, LabelConfig, help_of, load_config_file
from prefkit.training.config import TrainConfig

app = typer.Typer(
    name="prefkit",
    help="Preference datasets and DPO training for text-to-image diffusion and flow-matching models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _h(name: str, cls=GenerateConfig) -> str:
    # typer renders help as rich markup: "[default, flow matching]" would be read as a style tag and vanish
    from rich.markup import escape

    return escape(help_of(cls, name))


def _l(name: str) -> str:
    return _h(name, LabelConfig)


def _t(name: str) -> str:
    return _h(name, TrainConfig)


def _e(name: str) -> str:
    return _h(name, EvalConfig)


def merge_config(ctx: typer.Context, cls, config_file: Path | None, values: dict):
    """Defaults < --config file < flags given on the command line."""
    merged = dict(values)
    if config_file is not None:
        from_file = load_config_file(config_file, cls)
        for key, value in from_file.items():
            # typer vendors its own click: compare the source by name, not by enum class
            source = ctx.get_parameter_source(key)
            if getattr(source, "name", None) != "COMMANDLINE":
                merged[key] = value
    return cls(**merged)


def _run_stage(ctx: typer.Context, cls, config: Path | None, values: dict, module: str, function: str):
    """Resolve the config (defaults < --config < flags) and run one library stage; bad input exits 2."""
    import importlib

    from prefkit.errors import PrefkitError
    from prefkit.fileio import fs_error

    try:
        cfg = merge_config(ctx, cls, config, values)
        return cfg, getattr(importlib.import_module(module), function)(cfg)
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


@app.command()
def generate(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", help=_h("out"), show_default=False)] = None,
    model: Annotated[str, typer.Option(help=_h("model"))] = GenerateConfig.model,
    revision: Annotated[str | None, typer.Option(help=_h("revision"))] = None,
    lora: Annotated[str | None, typer.Option(help=_h("lora"), show_default=False)] = None,
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help=_h("prompt"), show_default=False)
    ] = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help=_h("prompts"), show_default=False)] = None,
    samples_per_prompt: Annotated[
        int, typer.Option(help=_h("samples_per_prompt"))
    ] = GenerateConfig.samples_per_prompt,
    steps: Annotated[int, typer.Option(help=_h("steps"))] = GenerateConfig.steps,
    guidance: Annotated[float, typer.Option(help=_h("guidance"))] = GenerateConfig.guidance,
    negative_prompt: Annotated[
        str, typer.Option(help=_h("negative_prompt"))
    ] = GenerateConfig.negative_prompt,
    eta: Annotated[float | None, typer.Option(help=_h("eta"), show_default=False)] = None,
    noise_level: Annotated[float | None, typer.Option(help=_h("noise_level"), show_default=False)] = None,
    seed: Annotated[int, typer.Option(help=_h("seed"))] = GenerateConfig.seed,
    same_noise: Annotated[bool, typer.Option("--same-noise", help=_h("same_noise"))] = False,
    height: Annotated[int | None, typer.Option(help=_h("height"), show_default=False)] = None,
    width: Annotated[int | None, typer.Option(help=_h("width"), show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help=_h("batch_size"))] = GenerateConfig.batch_size,
    groups_per_shard: Annotated[
        int, typer.Option(help=_h("groups_per_shard"))
    ] = GenerateConfig.groups_per_shard,
    dtype: Annotated[str, typer.Option(help=_h("dtype"))] = GenerateConfig.dtype,
    store_embeddings: Annotated[
        bool, typer.Option("--store-embeddings", help=_h("store_embeddings"))
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help=_h("resume"))] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_h("quiet"))] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML/JSON file with the same keys as these flags; flags win."),
    ] = None,
) -> None:
    """Sample images and write trajectory shards (latent chain, timesteps, per-step log-probs, PNG, metadata)."""
    values = {k: v for k, v in locals().items() if k not in ("ctx", "config")}
    values["prompt"] = values["prompt"] or []
    values["out"] = str(out) if out is not None else None
    cfg, manifest = _run_stage(ctx, GenerateConfig, config, values, "prefkit.generate", "run_generate")
    if not cfg.quiet and _is_main_process():
        counts = manifest["counts"]
        typer.echo(
            f"wrote {counts['samples']} trajectories in {counts['groups']} prompt groups, "
            f"{counts['shards']} shard(s), to {cfg.out} (preview: {Path(cfg.out) / 'preview.png'})"
        )


@app.command()
def label(
    ctx: typer.Context,
    dataset: Annotated[
        str, typer.Argument(help="Dataset folder, or `stats` followed by the folder for a summary table.")
    ],
    stats_dataset: Annotated[
        str | None, typer.Argument(help="With `stats`: the dataset folder.", show_default=False)
    ] = None,
    source: Annotated[str | None, typer.Option(help=_l("source"), show_default=False)] = None,
    input: Annotated[list[str] | None, typer.Option("--input", help=_l("input"), show_default=False)] = None,  # noqa: A002
    format: Annotated[str, typer.Option(help=_l("format"))] = LabelConfig.format,  # noqa: A002
    name: Annotated[str | None, typer.Option(help=_l("name"), show_default=False)] = None,
    pairs: Annotated[str, typer.Option(help=_l("pairs"))] = LabelConfig.pairs,
    tie_margin: Annotated[float, typer.Option(help=_l("tie_margin"))] = LabelConfig.tie_margin,
    model: Annotated[str | None, typer.Option(help=_l("model"), show_default=False)] = None,
    revision: Annotated[str | None, typer.Option(help=_l("revision"), show_default=False)] = None,
    processor: Annotated[str | None, typer.Option(help=_l("processor"), show_default=False)] = None,
    weights: Annotated[str | None, typer.Option(help=_l("weights"), show_default=False)] = None,
    method: Annotated[str | None, typer.Option(help=_l("method"), show_default=False)] = None,
    template: Annotated[str | None, typer.Option(help=_l("template"), show_default=False)] = None,
    device: Annotated[str, typer.Option(help=_l("device"))] = LabelConfig.device,
    dtype: Annotated[str, typer.Option(help=_l("dtype"))] = LabelConfig.dtype,
    batch_size: Annotated[int, typer.Option(help=_l("batch_size"))] = LabelConfig.batch_size,
    strict: Annotated[bool, typer.Option("--strict", help=_l("strict"))] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_l("overwrite"))] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_l("quiet"))] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML/JSON file with the same keys as these flags; flags win."),
    ] = None,
) -> None:
    """Label pairs within prompt groups: import human labels (--source human --input FILE) or run a judge
    (--source jpeg|aesthetic|pickscore|llava|python:module:function). `prefkit label stats DATASET` summarises."""
    from prefkit.errors import PrefkitError

    try:
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
    values = {k: v for k, v in locals().items() if k in LabelConfig.__dataclass_fields__}
    values["input"] = input or []
    cfg, meta = _run_stage(ctx, LabelConfig, config, values, "prefkit.label", "run_label")
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


@app.command()
def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help=_t("dataset"))],
    out: Annotated[Path | None, typer.Option("--out", help=_t("out"), show_default=False)] = None,
    objective: Annotated[str, typer.Option("--objective", help=_t("objective"))] = TrainConfig.objective,
    labels: Annotated[str | None, typer.Option("--labels", help=_t("labels"), show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", help=_t("model"), show_default=False)] = None,
    reference: Annotated[str, typer.Option("--reference", help=_t("reference"))] = TrainConfig.reference,
    old_policy: Annotated[str, typer.Option("--old-policy", help=_t("old_policy"))] = TrainConfig.old_policy,
    beta: Annotated[float | None, typer.Option("--beta", help=_t("beta"), show_default=False)] = None,
    eps: Annotated[float, typer.Option("--eps", help=_t("eps"))] = TrainConfig.eps,
    gamma: Annotated[float, typer.Option("--gamma", help=_t("gamma"))] = TrainConfig.gamma,
    clip: Annotated[float, typer.Option("--clip", help=_t("clip"))] = TrainConfig.clip,
    steps_per_pair: Annotated[
        int, typer.Option("--steps-per-pair", help=_t("steps_per_pair"))
    ] = TrainConfig.steps_per_pair,
    timestep_fraction: Annotated[
        float, typer.Option("--timestep-fraction", help=_t("timestep_fraction"))
    ] = TrainConfig.timestep_fraction,
    clip_range: Annotated[
        float, typer.Option("--clip-range", help=_t("clip_range"))
    ] = TrainConfig.clip_range,
    adv_clip: Annotated[float, typer.Option("--adv-clip", help=_t("adv_clip"))] = TrainConfig.adv_clip,
    min_prompt_count: Annotated[
        int, typer.Option("--min-prompt-count", help=_t("min_prompt_count"))
    ] = TrainConfig.min_prompt_count,
    score_function: Annotated[bool, typer.Option("--score-function", help=_t("score_function"))] = False,
    kl_coef: Annotated[float, typer.Option("--kl-coef", help=_t("kl_coef"))] = TrainConfig.kl_coef,
    critic_lr: Annotated[float, typer.Option("--critic-lr", help=_t("critic_lr"))] = TrainConfig.critic_lr,
    critic_reset_every: Annotated[
        int, typer.Option("--critic-reset-every", help=_t("critic_reset_every"))
    ] = TrainConfig.critic_reset_every,
    init_lora: Annotated[
        str | None, typer.Option("--init-lora", help=_t("init_lora"), show_default=False)
    ] = None,
    lr: Annotated[float, typer.Option("--lr", help=_t("lr"))] = TrainConfig.lr,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help=_t("weight_decay"), show_default=False)
    ] = None,
    adam_beta1: Annotated[
        float, typer.Option("--adam-beta1", help=_t("adam_beta1"))
    ] = TrainConfig.adam_beta1,
    adam_beta2: Annotated[
        float, typer.Option("--adam-beta2", help=_t("adam_beta2"))
    ] = TrainConfig.adam_beta2,
    lr_schedule: Annotated[
        str, typer.Option("--lr-schedule", help=_t("lr_schedule"))
    ] = TrainConfig.lr_schedule,
    warmup_steps: Annotated[
        int, typer.Option("--warmup-steps", help=_t("warmup_steps"))
    ] = TrainConfig.warmup_steps,
    max_grad_norm: Annotated[
        float, typer.Option("--max-grad-norm", help=_t("max_grad_norm"))
    ] = TrainConfig.max_grad_norm,
    max_steps: Annotated[int, typer.Option("--max-steps", help=_t("max_steps"))] = TrainConfig.max_steps,
    batch_size: Annotated[int, typer.Option("--batch-size", help=_t("batch_size"))] = TrainConfig.batch_size,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help=_t("grad_accum"))] = TrainConfig.grad_accum,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help=_t("lora_rank"))] = TrainConfig.lora_rank,
    lora_alpha: Annotated[
        float | None, typer.Option("--lora-alpha", help=_t("lora_alpha"), show_default=False)
    ] = None,
    lora_dropout: Annotated[
        float, typer.Option("--lora-dropout", help=_t("lora_dropout"))
    ] = TrainConfig.lora_dropout,
    lora_targets: Annotated[
        str | None, typer.Option("--lora-targets", help=_t("lora_targets"), show_default=False)
    ] = None,
    mixed_precision: Annotated[
        str, typer.Option("--mixed-precision", help=_t("mixed_precision"))
    ] = TrainConfig.mixed_precision,
    seed: Annotated[int, typer.Option("--seed", help=_t("seed"))] = TrainConfig.seed,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help=_t("checkpoint_every"))
    ] = TrainConfig.checkpoint_every,
    guidance: Annotated[
        float | None, typer.Option("--guidance", help=_t("guidance"), show_default=False)
    ] = None,
    negative_prompt: Annotated[
        str | None, typer.Option("--negative-prompt", help=_t("negative_prompt"), show_default=False)
    ] = None,
    log_with: Annotated[
        str | None, typer.Option("--log-with", help=_t("log_with"), show_default=False)
    ] = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help=_t("gradient_checkpointing"))
    ] = False,
    force: Annotated[bool, typer.Option("--force", help=_t("force"))] = False,
    resume: Annotated[bool, typer.Option("--resume", help=_t("resume"))] = False,
    resolution: Annotated[
        int | None, typer.Option("--resolution", help=_t("resolution"), show_default=False)
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_t("quiet"))] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML/JSON file with the same keys as these flags; flags win."),
    ] = None,
) -> None:
    """Train a LoRA with offline D3PO, dense-reward DPO or Diffusion-DPO (final image pairs) against the
    frozen base model (adapters off), or with DDPO / TDPO on a scorer's per-sample scores."""
    values = {k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__}
    values["out"] = str(out) if out is not None else None
    cfg, last = _run_stage(ctx, TrainConfig, config, values, "prefkit.training.run", "run_train")
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
            + f"LoRA in {Path(cfg.out) / 'lora'} (pipe.load_lora_weights), metrics in {Path(cfg.out) / 'metrics.jsonl'}"
        )


@app.command("eval")
def eval_(
    ctx: typer.Context,
    lora: Annotated[str | None, typer.Option("--lora", help=_e("lora"), show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", help=_e("out"), show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", help=_e("model"), show_default=False)] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help=_e("revision"), show_default=False)
    ] = None,
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help=_e("prompt"), show_default=False)
    ] = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help=_e("prompts"), show_default=False)] = None,
    samples: Annotated[int, typer.Option("--samples", help=_e("samples"))] = EvalConfig.samples,
    seed: Annotated[int, typer.Option("--seed", help=_e("seed"))] = EvalConfig.seed,
    steps: Annotated[int | None, typer.Option("--steps", help=_e("steps"), show_default=False)] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", help=_e("guidance"), show_default=False)
    ] = None,
    negative_prompt: Annotated[
        str | None, typer.Option("--negative-prompt", help=_e("negative_prompt"), show_default=False)
    ] = None,
    eta: Annotated[float | None, typer.Option("--eta", help=_e("eta"), show_default=False)] = None,
    noise_level: Annotated[
        float | None, typer.Option("--noise-level", help=_e("noise_level"), show_default=False)
    ] = None,
    height: Annotated[int | None, typer.Option("--height", help=_e("height"), show_default=False)] = None,
    width: Annotated[int | None, typer.Option("--width", help=_e("width"), show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help=_e("batch_size"))] = EvalConfig.batch_size,
    dtype: Annotated[str, typer.Option("--dtype", help=_e("dtype"))] = EvalConfig.dtype,
    device: Annotated[str, typer.Option("--device", help=_e("device"))] = EvalConfig.device,
    source: Annotated[str | None, typer.Option("--source", help=_e("source"), show_default=False)] = None,
    judge_model: Annotated[
        str | None, typer.Option("--judge-model", help=_e("judge_model"), show_default=False)
    ] = None,
    judge_revision: Annotated[
        str | None, typer.Option("--judge-revision", help=_e("judge_revision"), show_default=False)
    ] = None,
    processor: Annotated[
        str | None, typer.Option("--processor", help=_e("processor"), show_default=False)
    ] = None,
    weights: Annotated[str | None, typer.Option("--weights", help=_e("weights"), show_default=False)] = None,
    method: Annotated[str | None, typer.Option("--method", help=_e("method"), show_default=False)] = None,
    template: Annotated[
        str | None, typer.Option("--template", help=_e("template"), show_default=False)
    ] = None,
    judge_device: Annotated[
        str | None, typer.Option("--judge-device", help=_e("judge_device"), show_default=False)
    ] = None,
    judge_dtype: Annotated[
        str, typer.Option("--judge-dtype", help=_e("judge_dtype"))
    ] = EvalConfig.judge_dtype,
    judge_batch_size: Annotated[
        int, typer.Option("--judge-batch-size", help=_e("judge_batch_size"))
    ] = EvalConfig.judge_batch_size,
    tie_margin: Annotated[
        float | None, typer.Option("--tie-margin", help=_e("tie_margin"))
    ] = EvalConfig.tie_margin,
    kl: Annotated[bool, typer.Option("--kl/--no-kl", help=_e("kl"))] = EvalConfig.kl,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_e("overwrite"))] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_e("quiet"))] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML/JSON file with the same keys as these flags; flags win."),
    ] = None,
) -> None:
    """Compare base and base + LoRA on held-out prompts with the same seeds, scored by any judge of
    prefkit label: win rate with a 95% interval, mean scores, drift; writes report.json, samples.jsonl,
    grid.png."""
    values = {k: v for k, v in locals().items() if k in EvalConfig.__dataclass_fields__}
    values["prompt"] = values["prompt"] or []
    values["out"] = str(out) if out is not None else None
    cfg, report = _run_stage(ctx, EvalConfig, config, values, "prefkit.evaluate", "run_eval")
    if not cfg.quiet:
        from prefkit.evaluate import print_summary

        print_summary(report)
        typer.echo(f"wrote {Path(report['out']) / 'report.json'}, samples.jsonl and grid.png")


def _lp(name: str) -> str:
    from prefkit.config import LoopConfig

    return _h(name, LoopConfig)


@app.command()
def loop(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", help=_lp("out"), show_default=False)] = None,
    rounds: Annotated[int, typer.Option("--rounds", help=_lp("rounds"))] = 2,
    model: Annotated[str, typer.Option("--model", help=_lp("model"))] = "tiny-shapes",
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help=_lp("prompt"), show_default=False)
    ] = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help=_lp("prompts"), show_default=False)] = None,
    samples_per_prompt: Annotated[
        int, typer.Option("--samples-per-prompt", help=_lp("samples_per_prompt"))
    ] = 8,
    steps: Annotated[int, typer.Option("--steps", help=_lp("steps"))] = 20,
    guidance: Annotated[float, typer.Option("--guidance", help=_lp("guidance"))] = 5.0,
    noise_level: Annotated[
        float | None, typer.Option("--noise-level", help=_lp("noise_level"), show_default=False)
    ] = None,
    eta: Annotated[float | None, typer.Option("--eta", help=_lp("eta"), show_default=False)] = None,
    height: Annotated[int | None, typer.Option("--height", help=_lp("height"), show_default=False)] = None,
    width: Annotated[int | None, typer.Option("--width", help=_lp("width"), show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help=_lp("seed"))] = 0,
    generate_batch_size: Annotated[
        int, typer.Option("--generate-batch-size", help=_lp("generate_batch_size"))
    ] = 8,
    source: Annotated[str, typer.Option("--source", help=_lp("source"))] = "jpeg",
    objective: Annotated[str, typer.Option("--objective", help=_lp("objective"))] = "ddpo",
    max_steps: Annotated[int, typer.Option("--max-steps", help=_lp("max_steps"))] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help=_lp("batch_size"))] = 4,
    lr: Annotated[float, typer.Option("--lr", help=_lp("lr"))] = 3e-4,
    kl_coef: Annotated[float, typer.Option("--kl-coef", help=_lp("kl_coef"))] = 0.0,
    timestep_fraction: Annotated[
        float, typer.Option("--timestep-fraction", help=_lp("timestep_fraction"))
    ] = 1.0,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help=_lp("lora_rank"))] = 4,
    train_config: Annotated[
        str | None, typer.Option("--train-config", help=_lp("train_config"), show_default=False)
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help=_lp("resume"))] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_lp("quiet"))] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML/JSON file with the same keys as these flags; flags win."),
    ] = None,
) -> None:
    """Rounds of generate (current LoRA) -> label (a scorer) -> train (from that LoRA): OUT/round-NNN/,
    rounds.jsonl with the mean score of every round's fresh samples, and rewards.png."""
    from prefkit.config import LoopConfig

    values = {k: v for k, v in locals().items() if k in LoopConfig.__dataclass_fields__}
    values["prompt"] = values["prompt"] or []
    values["out"] = str(out) if out is not None else None
    cfg, records = _run_stage(ctx, LoopConfig, config, values, "prefkit.loop", "run_loop")
    if not cfg.quiet:
        for rec in records:
            trained = f"-> trained {rec['lora']}" if rec["lora"] else "(measured only)"
            typer.echo(
                f"round {rec['round']}: mean score {rec['score_mean']:.4f} +- {rec['score_se']:.4f} "
                f"({rec['samples']} samples) {trained}"
            )
        typer.echo(f"rounds in {Path(cfg.out) / 'rounds.jsonl'}, plot {Path(cfg.out) / 'rewards.png'}")


@app.command()
def bench(
    what: Annotated[
        str,
        typer.Argument(
            help="What to measure: generate (overhead, bytes on disk), train (step cost vs a bare loop, "
            "stored vs live, read throughput, peak memory), all, or gpu (all of it on the real-size models "
            "in bfloat16 on CUDA, with the environment, into --json; --dry-run: tiny models on the CPU)."
        ),
    ] = "all",
    model: Annotated[str, typer.Option(help="Model, as for generate.")] = "tiny-sd3",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    steps: Annotated[
        int, typer.Option(help="Denoising steps per trajectory (training: max(2, steps // 2)).")
    ] = 20,
    batch_size: Annotated[
        int, typer.Option(help="Images per generation batch (training: max(1, batch // 4) pairs per step).")
    ] = 8,
    repeats: Annotated[
        int, typer.Option(help="Interleaved measurements per side; medians are reported.")
    ] = 5,
    dtype: Annotated[
        str,
        typer.Option(
            help="Model dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, float16, bfloat16."
        ),
    ] = "auto",
    height: Annotated[
        int | None,
        typer.Option(help="Image height in pixels (default: the model's native size).", show_default=False),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option(help="Image width in pixels (default: the model's native size).", show_default=False),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Also write the figures as JSON here (bench gpu: default bench-gpu.json)."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="bench gpu only: run the same code on the CPU with tiny models, 1 repeat."
        ),
    ] = False,
) -> None:
    """Measure prefkit against its baselines, as ratios taken in the same run. --model also takes the
    real-size random-weight models sd15-random, sd3-medium-random and sdxl-random (built on first use;
    meant for --device cuda)."""
    import json

    from prefkit.bench import print_figures, run_bench, run_gpu_bench
    from prefkit.errors import PrefkitError
    from prefkit.fileio import atomic_write_bytes

    if what not in ("generate", "train", "all", "gpu"):
        _fail(PrefkitError(f"bench {what!r}: choose generate, train, all or gpu"))
    if what == "gpu":
        out = json_out or Path("bench-gpu.json")

        def show(entry, figures):
            typer.echo(
                f"{entry['model']}, {entry['height']} px, {entry['steps']} steps, batch {entry['batch_size']}:"
            )
            print_figures(figures)

        try:
            report = run_gpu_bench(dry_run, repeats, on_figures=show)
            atomic_write_bytes(out, json.dumps(report, indent=2).encode())
        except PrefkitError as exc:
            _fail(exc)
        typer.echo(f"wrote {out}")
        return
    if device not in ("cpu", "cuda"):
        _fail(PrefkitError(f"--device {device}: choose cpu or cuda"))
    if min(steps, batch_size, repeats) < 1:
        _fail(PrefkitError("--steps, --batch-size and --repeats must be at least 1"))
    if dtype not in ("auto", "float32", "float16", "bfloat16"):
        _fail(PrefkitError(f"--dtype {dtype}: choose auto, float32, float16 or bfloat16"))
    try:
        figures = run_bench(what, model, device, steps, batch_size, repeats, dtype, height, width)
    except PrefkitError as exc:
        _fail(exc)
    print_figures(figures)
    if json_out is not None:
        try:
            atomic_write_bytes(json_out, json.dumps([f.summary() for f in figures], indent=2).encode())
        except PrefkitError as exc:
            _fail(exc)


@app.command()
def version() -> None:
    """Print prefkit's version."""
    from prefkit import __version__

    typer.echo(__version__)


def _annotate_config():
    from prefkit.config import AnnotateConfig

    return AnnotateConfig


def _a(name: str) -> str:
    return _h(name, _annotate_config())


@app.command()
def annotate(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help=_a("dataset"))],
    host: Annotated[str, typer.Option("--host", help=_a("host"))] = _annotate_config().host,
    port: Annotated[int, typer.Option("--port", help=_a("port"))] = _annotate_config().port,
    per_pair: Annotated[int, typer.Option("--per-pair", help=_a("per_pair"))] = _annotate_config().per_pair,
    token: Annotated[str | None, typer.Option("--token", help=_a("token"), show_default=False)] = None,
    labels: Annotated[str | None, typer.Option("--labels", help=_a("labels"), show_default=False)] = None,
    lease: Annotated[float, typer.Option("--lease", help=_a("lease"))] = _annotate_config().lease,
    client_leases: Annotated[
        int | None, typer.Option("--client-leases", help=_a("client_leases"), show_default=False)
    ] = None,
    export: Annotated[str | None, typer.Option("--export", help=_a("export"), show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_a("overwrite"))] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_a("quiet"))] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML/JSON file with the same keys as these flags; flags win."),
    ] = None,
) -> None:
    """Serve a page where people label pairs (keys 1 / 2 / 3 tie / s skip / u undo); votes go to
    DATASET/annotations.sqlite. --export NAME writes them as a label set."""
    values = {k: v for k, v in locals().items() if k in _annotate_config().__dataclass_fields__}
    cfg, result = _run_stage(
        ctx, _annotate_config(), config, values, "prefkit.annotate.serve", "run_annotate"
    )
    if cfg.export is not None and not cfg.quiet:
        _print_label_set(result, cfg.dataset)
    elif cfg.export is None:
        typer.echo(f"stopped: {result['votes']} votes from {result['annotators']} annotator(s) saved")


def _publish_config():
    from prefkit.config import PublishConfig

    return PublishConfig


def _pub(name: str) -> str:
    return _h(name, _publish_config())


@app.command()
def publish(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help=_pub("dataset"))],
    repo_id: Annotated[
        str | None, typer.Option("--repo-id", help=_pub("repo_id"), show_default=False)
    ] = None,
    labels: Annotated[str | None, typer.Option("--labels", help=_pub("labels"), show_default=False)] = None,
    private: Annotated[bool, typer.Option("--private", help=_pub("private"))] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help=_pub("dry_run"))] = False,
    staging: Annotated[
        str | None, typer.Option("--staging", help=_pub("staging"), show_default=False)
    ] = None,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help=_pub("val_fraction"))
    ] = _publish_config().val_fraction,
    seed: Annotated[int, typer.Option("--seed", help=_pub("seed"))] = _publish_config().seed,
    license: Annotated[  # noqa: A002
        str, typer.Option("--license", help=_pub("license"))
    ] = _publish_config().license,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_pub("quiet"))] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML/JSON file with the same keys as these flags; flags win."),
    ] = None,
) -> None:
    """Publish a dataset and a label set as a Hub dataset: Pick-a-Pic pairs (parquet), trajectory shards, a
    dataset card; built in --staging, then uploaded (--dry-run: built and listed, no network)."""
    values = {k: v for k, v in locals().items() if k in _publish_config().__dataclass_fields__}
    cfg, summary = _run_stage(ctx, _publish_config(), config, values, "prefkit.publish", "run_publish")
    if not cfg.quiet:
        from prefkit.publish import print_listing

        print_listing(summary)
    if summary["uploaded"]:
        typer.echo(f"published {summary['url']}")


def main() -> None:
    app(prog_name="prefkit")


if __name__ == "__main__":
    sys.exit(main())
