"""``prefkit train``: the stage, the same for every objective. It reads the objective's row in the table
(prefkit/training/table.py): the data kind it opens and the step class it trains with.

Order: settings checked (nothing written on bad input), the data opened and checked, the model loaded,
the objective's family-dependent settings, the output folder checked, the policy (base denoiser + LoRA;
the reference is the SAME network with the adapters disabled, docs/math.md section 12), the step's
start-up checks, the optimizer loop (prefkit.training.engine), the LoRA and summary.json.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from prefkit.progress import note
from prefkit.training.config import TrainConfig, resolve, unread_flags
from prefkit.training.recommended import apply_recommended
from prefkit.training.table import IMAGE_PAIRS, objective
from prefkit.training.validation import check_validation, validation_hook


def data_kind(kind: str):
    """The class that opens a data kind of the table."""
    if kind == IMAGE_PAIRS:
        from prefkit.training.images import ImageData

        return ImageData
    from prefkit.training.trajectories import TrajectoryData

    return TrajectoryData


def step_class(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """A local DATASET and --init-lora as absolute paths, so that config.yaml and summary.json name them
    from anywhere (prefkit eval finds the dataset through them); a Hub id stays as it is."""
    import dataclasses

    local = {}
    for name in ("dataset", "init_lora"):
        value = getattr(cfg, name)
        if value and Path(value).expanduser().exists():
            local[name] = str(Path(value).expanduser().resolve())
    return dataclasses.replace(cfg, **local)


def run_train(cfg: TrainConfig, given: frozenset[str] | None = None) -> dict[str, Any]:
    """Train a LoRA on ``cfg.dataset`` with ``cfg.objective``; returns the final metrics record (with
    ``recent``: the means of the last steps). ``given``: the settings the user set (the CLI passes them),
    which a model folder's recommended settings never override; None: those unlike their default."""
    from prefkit.families import family_of, resolve_model
    from prefkit.training.engine import (
        begin_outputs,
        check_out,
        check_resume,
        finish_run,
        setup_run,
        start_accelerator,
        train_loop,
    )

    cfg = resolve(absolute_paths(cfg))
    if cfg.push_to_hub:  # offline or without a token: said now, not after the training
        from prefkit.publish import check_hub_access

        check_hub_access(
            instead="leave out --push-to-hub and publish later with `prefkit publish --lora OUT`"
        )
    row = objective(cfg.objective)
    Step = step_class(row.step)
    out = Path(cfg.out).expanduser()
    data = data_kind(row.data)(cfg, row.data)
    folder = Path(resolve_model(data.load_from))
    cfg, recommended = apply_recommended(cfg, folder, given) if folder.is_dir() else (cfg, [])
    cfg = resolve(cfg)
    check_validation(cfg, data)
    check_out(out, cfg)
    accelerator = start_accelerator(cfg, out)
    ignored = [shown for shown, _ in unread_flags(cfg)]
    if ignored:
        note(accelerator.is_main_process, f"--objective {cfg.objective} ignores {'; '.join(ignored)}")
    for text in recommended:
        note(accelerator.is_main_process and not cfg.quiet, text)
    pipe = data.load_pipeline(accelerator.device)
    family = family_of(pipe)
    data.bind(family)
    cfg = Step.configure(cfg, family)
    check_resume(out, cfg)
    run = setup_run(cfg, out, accelerator, pipe, family)
    step = Step(cfg, run, data)
    step.prepare()
    begin_outputs(run)
    last = train_loop(run, data.items, step, unit=Step.unit, on_step=validation_hook(cfg, run, data))
    step.save(out)
    summary: dict[str, Any] = {"final": last, **data.summary(), "objective": cfg.objective, **step.summary()}
    summary["memory"] = run.memory.summary()
    if cfg.init_lora:
        summary["init_lora"] = cfg.init_lora
    recent = finish_run(run, summary)
    result = {**last, **data.result(), "recent": recent, "memory": summary["memory"]}
    if cfg.push_to_hub and accelerator.is_main_process:
        result["hub"] = push_to_hub(out, cfg)
    return result


def push_to_hub(out: Path, cfg: TrainConfig) -> str:
    """--push-to-hub: the run's LoRA and model card to the Hub, by ``prefkit publish --lora OUT`` (the same
    function); returns the repository's URL. A failure leaves the trained run as it is and says how to
    publish it without training again."""
    from prefkit.config import PublishConfig
    from prefkit.publish import run_publish

    again = (
        f"the training run is complete: upload it with `prefkit publish --lora {out} --repo-id "
        f"{cfg.push_to_hub}` (files already on the Hub are not sent again)"
    )
    summary = run_publish(PublishConfig(lora=str(out), repo_id=cfg.push_to_hub, quiet=True), again=again)
    for text in summary["notes"]:  # what the card lacks: said even with --quiet
        note(True, text)
    return summary["url"]
