"""The training engine every objective shares, knowing none of them by name: the accelerator, the run
(setup_run, begin_outputs, train_loop, finish_run), accumulation, clipping, the NaN stop, checkpoints,
resume and metrics.

Items and positions. The engine trains on a list of items (pairs, scored samples, image pairs), each with
a ``shard``. Each epoch the shards are shuffled, then the items of each shard (seeded by (seed, epoch));
data is read shard by shard, so at most one shard's samples are in memory. Global micro-batch m is
positions [m B N, (m + 1) B N) of that order (B items per process, N processes); process r takes its
slice r. An objective's per-item random choices are seeded by (seed, epoch, position)
(``seeded_generator``): independent of B, N and resumes, which makes batch 4 x 1 == batch 1 x 4, two
processes == one process and resumed == uninterrupted.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prefkit.errors import PrefkitError
from prefkit.fileio import (
    append_line,
    atomic_write_bytes,
    check_output_folder,
    removed_on_failure,
    write_yaml,
)
from prefkit.memory import PhasePeak
from prefkit.runs import SUMMARY_WINDOW, recent_means
from prefkit.training.batch import Batch
from prefkit.training.config import RESUME_KEYS, TrainConfig
from prefkit.training.lora import add_lora, load_init_lora, lora_state, save_lora


def epoch_order(pairs: list, seed: int, epoch: int) -> list:
    """Shards shuffled, then the items within each shard shuffled: reading stays shard by shard."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    by_shard: dict[int, list] = {}
    for p in pairs:
        by_shard.setdefault(p.shard, []).append(p)
    out = []
    shards = sorted(by_shard)
    for si in torch.randperm(len(shards), generator=g).tolist():
        group = by_shard[shards[si]]
        out += [group[i] for i in torch.randperm(len(group), generator=g).tolist()]
    return out


@dataclass
class Run:
    """One training run's moving parts, shared by every objective."""

    cfg: TrainConfig
    out: Path
    accelerator: Any
    pipe: Any
    family: Any
    denoiser: torch.nn.Module
    net: torch.nn.Module
    params: list
    optimizer: Any
    lr_sched: Any
    state: dict
    # more objects with state_dict / load_state_dict saved in every checkpoint (extras.pt), e.g. TDPO's
    # critic and its optimizer; registered with add_extras, which restores them when resuming
    extras: dict = field(default_factory=dict)
    # peak memory before the optimizer steps (loading) and during them (prefkit.memory); summary.json
    memory: PhasePeak | None = None


def add_extras(run: Run, **objects) -> None:
    """Register objects (modules, optimizers) whose state goes into every checkpoint; when the run was
    resumed from a checkpoint, their saved state is loaded now."""
    run.extras.update(objects)
    latest = latest_checkpoint(run.out) if run.cfg.resume and run.state["step"] > 0 else None
    if latest is not None and (latest / "extras.pt").is_file():
        saved = torch.load(latest / "extras.pt", weights_only=True)
        for name, obj in objects.items():
            obj.load_state_dict(saved[name])


def start_accelerator(cfg: TrainConfig, out: Path):
    """The Accelerator, with the process checks: a multi-process launch without CUDA must ask for the
    CPU (gloo), or each process trains alone."""
    from accelerate import Accelerator

    from prefkit.distributed import check_world, launch_world

    world, cpu = launch_world(cfg.device)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=cfg.mixed_precision,
        log_with=check_trackers(cfg.log_with),
        project_dir=str(out),
    )
    check_world(accelerator.num_processes, world)
    return accelerator


def setup_run(cfg: TrainConfig, out: Path, accelerator, pipe, family) -> Run:
    """Freeze the pipeline, add the LoRA, build AdamW and the LR schedule, prepare (DDP) the denoiser,
    and restore the latest checkpoint when resuming."""
    for part in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        m = getattr(pipe, part, None)
        if m is not None:
            m.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # LoRA initialisation
    denoiser = family.denoiser
    add_lora(denoiser, cfg, family)
    if cfg.init_lora:
        load_init_lora(denoiser, cfg.init_lora, family)
    if cfg.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )
    from diffusers.optimization import get_scheduler

    lr_sched = get_scheduler(
        cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps
    )
    # the LoRA-wrapped denoiser itself goes through prepare (DDP): its forward is what runs, so the
    # gradients are synchronised (docs/math.md section 12, the second published bug)
    net, optimizer = accelerator.prepare(denoiser, optimizer)
    family.set_network(net)

    state = {"step": 0, "micro_batch": 0}
    if cfg.resume and (latest := latest_checkpoint(out)) is not None:
        state = load_checkpoint(latest, denoiser, optimizer, lr_sched)
    if cfg.resume and accelerator.is_main_process:
        # a run killed before its first checkpoint restarts from step 0: its metrics go too
        truncate_metrics(out / "metrics.jsonl", state["step"])
    return Run(cfg, out, accelerator, pipe, family, denoiser, net, params, optimizer, lr_sched, state)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines of steps <= ``step`` (the checkpoint a resumed run starts from). A last line
    torn by a kill or a full disk (no newline, not JSON) is dropped; damage elsewhere is an error."""
    from prefkit.fileio import parse_json

    if not path.is_file():
        return
    lines = path.read_bytes().split(b"\n")
    kept = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line, f"{path}:{i}")
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise PrefkitError(f"{path}:{i}: not a metrics record (an object with an integer 'step')")
        except PrefkitError as exc:
            if i == len(lines):  # the torn end of an interrupted append: no newline after it
                break
            raise PrefkitError(f"{exc}; remove the damaged line(s) or the file to resume") from None
        if rec["step"] <= step:
            kept.append(line.decode("utf-8") + "\n")
    atomic_write_bytes(path, "".join(kept).encode())


def begin_outputs(run: Run) -> None:
    """config.yaml (the settings a resume must share) and the trackers."""
    cfg = run.cfg
    if run.accelerator.is_main_process:
        run.out.mkdir(parents=True, exist_ok=True)
        write_yaml(run.out / "config.yaml", cfg.to_dict())
    if cfg.log_with:
        run.accelerator.init_trackers(
            "prefkit", config={k: v for k, v in cfg.to_dict().items() if v is not None}
        )


def train_loop(run: Run, pairs: list, step, unit: str = "pairs", on_step=None) -> dict[str, Any]:
    """The optimizer steps: micro-batches of pair positions (seeded order, see the module docstring),
    accumulation, NaN stop, clipping, AdamW, schedule, metrics.jsonl, progress and checkpoints.

    ``step(batch, sync)`` runs forward and backward of one micro-batch -- ``batch`` is a
    prefkit.training.batch.Batch (items with their epoch and position) -- and returns its metrics
    (``loss``, and ``accuracy`` for pairs). ``pairs`` are the training items: pairs, scored samples
    (``unit`` "samples") or image pairs, each with a ``shard``; the throughput is logged as
    ``{unit}_per_s``. ``on_step(step)`` runs after each optimizer step (validation images). The peak memory
    of the steps, apart from loading's, is left in ``run.memory``."""
    cfg, out, accelerator, state = run.cfg, run.out, run.accelerator, run.state
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = cfg.batch_size * world  # pairs per global micro-batch
    # positions per epoch: whole global batches (B x N x A); with fewer pairs than one global batch,
    # positions wrap around the epoch's order
    global_batch = per_step * cfg.grad_accum
    epoch_len = max(global_batch, len(pairs) - len(pairs) % global_batch)
    metrics_path = out / "metrics.jsonl"
    last: dict[str, Any] = {}
    last_ckpt = latest_checkpoint(out)
    t0, pairs_done = time.perf_counter(), 0
    from prefkit.progress import progress

    run.memory = PhasePeak(accelerator.device)
    run.memory.start()  # the loading peak ends here; summary.json reports both
    with progress(main and not cfg.quiet, cfg.max_steps, f"train {cfg.objective}", "steps") as advance:
        advance(state["step"])
        while state["step"] < cfg.max_steps:
            sums: dict[str, float] = {}
            try:
                for a in range(cfg.grad_accum):
                    epoch, pos = divmod(state["micro_batch"] * per_step, epoch_len)
                    order = epoch_order(pairs, cfg.seed, epoch)
                    start = pos + rank * cfg.batch_size
                    batch = [
                        (order[(start + i) % len(order)], epoch, start + i) for i in range(cfg.batch_size)
                    ]
                    stats = step(Batch.of(batch), a == cfg.grad_accum - 1)
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
                    state["micro_batch"] += 1
            except NonFiniteLoss as exc:
                raise PrefkitError(
                    f"step {state['step'] + 1}: the loss is {exc.args[0]}; stopped before updating the weights. "
                    f"Last good checkpoint: {last_ckpt or 'none (no checkpoint was saved yet)'}"
                ) from None
            grad_norm = None
            if cfg.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(run.params, cfg.max_grad_norm))
            run.optimizer.step()
            run.lr_sched.step()
            run.optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            pairs_done += global_batch
            reduced = {
                k: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean"))
                for k, v in sums.items()
            }
            last = {
                "step": state["step"],
                **reduced,
                "grad_norm": grad_norm,
                "lr": run.lr_sched.get_last_lr()[0],
                f"{unit}_per_s": pairs_done / (time.perf_counter() - t0),
                "epoch": (state["micro_batch"] * per_step) // epoch_len,
            }
            if main:
                append_line(metrics_path, json.dumps(last))
            if cfg.log_with:
                accelerator.log({k: v for k, v in last.items() if v is not None}, step=state["step"])
            shown = (
                f"acc {last['accuracy']:.2f}" if "accuracy" in last else f"clipfrac {last['clipfrac']:.2f}"
            )
            advance(1, f"loss {last['loss']:.4f}  {shown}  {last[f'{unit}_per_s']:.1f} {unit}/s")
            if on_step is not None:  # e.g. validation images (prefkit.training.validation)
                on_step(state["step"])
            if (
                cfg.checkpoint_every
                and state["step"] % cfg.checkpoint_every == 0
                and state["step"] < cfg.max_steps
            ):
                last_ckpt = save_run_checkpoint(run)
    return last


def save_run_checkpoint(run: Run) -> Path:
    return save_checkpoint(
        run.out, run.state, run.pipe, run.denoiser, run.optimizer, run.lr_sched, run.accelerator, run.extras
    )


def finish_run(run: Run, summary: dict) -> dict[str, Any] | None:
    """The final checkpoint, the LoRA in diffusers format, summary.json with the mean metrics of the last
    steps (returned, on the main process); trackers closed."""
    save_run_checkpoint(run)
    recent = None
    if run.accelerator.is_main_process:
        recent = summary["recent"] = recent_means(run.out / "metrics.jsonl", SUMMARY_WINDOW)
        lora = run.out / "lora"
        with removed_on_failure(lora):
            save_lora(run.pipe, run.denoiser, lora)
        atomic_write_bytes(run.out / "summary.json", json.dumps(summary, indent=2).encode())
    run.accelerator.wait_for_everyone()
    if run.cfg.log_with:
        run.accelerator.end_training()
    return recent


def check_finite(loss: torch.Tensor, accelerator) -> None:
    """Every process learns whether any process saw a NaN/inf, so all stop together (no hang)."""
    flag = torch.tensor(float(torch.isfinite(loss.detach())), device=loss.device)
    if float(accelerator.reduce(flag, "min")) < 1:
        raise NonFiniteLoss(float(loss.detach()))


def sync_context(accelerator, net, sync: bool):
    """DDP all-reduces the gradients only in the last backward of an optimizer step; no_sync must
    wrap the forward pass as well as the backward to take effect."""
    return contextlib.nullcontext() if sync else accelerator.no_sync(net)


def seeded_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """The per-pair random choices, seeded by (seed, epoch, position): independent of batching."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + position) % (2**63))


class NonFiniteLoss(PrefkitError):
    pass


def check_out(out: Path, cfg: TrainConfig) -> None:
    """--out: absent, an empty folder, or (with --resume) the folder of an interrupted run."""
    check_output_folder(
        out, allow=cfg.resume, hint="pass --resume to continue the run there, or choose a new folder"
    )


def check_resume(out: Path, cfg: TrainConfig) -> None:
    """--resume: the settings of RESUME_KEYS (of ``cfg``, resolved) must be those of the interrupted run
    (its config.yaml)."""
    saved = out / "config.yaml"
    if not (cfg.resume and saved.is_file()):
        return
    import yaml

    old = {k.replace("-", "_"): v for k, v in (yaml.safe_load(saved.read_text()) or {}).items()}
    new = cfg.to_dict()  # run_train resolved it (and filled the family's settings) before
    diff = [k for k in RESUME_KEYS if k in old and old[k] != new[k]]
    if diff:
        shown = "; ".join(f"{k}: was {old[k]!r}, now {new[k]!r}" for k in diff)
        raise PrefkitError(f"--resume {out}: settings differ from the interrupted run ({shown})")


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(
        out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1])
    )
    return found[-1].parent if found else None


def save_checkpoint(
    out: Path, state: dict, pipe, denoiser, optimizer, lr_sched, accelerator, extras: dict | None = None
) -> Path:
    """checkpoint-N/: the LoRA (diffusers format + peft keys), optimizer, LR schedule, RNG, data cursor.
    Written to a temporary folder and renamed: a kill never leaves a half checkpoint behind."""
    import os
    import shutil

    from safetensors.torch import save

    final = out / f"checkpoint-{state['step']}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = out / f".checkpoint-{state['step']}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with removed_on_failure(tmp, name=final):
            tmp.mkdir(parents=True)
            save_lora(pipe, denoiser, tmp)
            (tmp / "lora_peft.safetensors").write_bytes(save(lora_state(denoiser)))
            # serialised in memory, then written: torch.save's zip writer reports a full disk as
            # "unexpected pos", while write() raises ENOSPC, which names the cause
            _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
            _torch_save(lr_sched.state_dict(), tmp / "scheduler.pt")
            _torch_save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
            if extras:
                _torch_save({name: obj.state_dict() for name, obj in extras.items()}, tmp / "extras.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(state))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _torch_save(obj: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getbuffer())


def load_checkpoint(folder: Path, denoiser, optimizer, lr_sched) -> dict:
    """Restore a checkpoint. The reference stays the base model: it is the adapters-off network, and
    only the adapters are restored (no copy of the model is taken after resuming, docs/math.md section 12)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(denoiser, load_file(str(folder / "lora_peft.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    lr_sched.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(folder / "rng.pt", weights_only=True)["torch"])
    return json.loads((folder / "trainer_state.json").read_text())


# --log-with names -> the package each needs (accelerate only warns and logs nothing without it)
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_trackers(log_with: str | None) -> list[str] | None:
    """The trackers of --log-with, each checked: known, and its package installed."""
    import importlib.util

    if not log_with:
        return None
    names = [t.strip() for t in log_with.split(",") if t.strip()]
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise PrefkitError(f"--log-with {name}: choose {' or '.join(TRACKER_PACKAGES)} (comma-separated)")
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise PrefkitError(
                f"--log-with {name}: the {TRACKER_PACKAGES[name]} package is not installed; "
                f"pip install 'prefkit[trackers]' (or pip install {TRACKER_PACKAGES[name]})"
            )
    return names
