"""TrainConfig: the settings of ``prefkit train``, each declared once.

The common settings are the fields of ``CommonTrainConfig`` below; every objective's own flags come from
the objectives table (prefkit/training/table.py). TrainConfig is the two together, so the
CLI, ``--config`` files, config.yaml and the resume check all derive from one declaration. A field whose
metadata says ``resume=False`` may change when a run is resumed; every other field must match.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefkit.config import field, keys_of
from prefkit.errors import PrefkitError
from prefkit.hub import REPO_ID
from prefkit.training.table import OBJECTIVES, flags, objective, readers


def _free(default: Any = None, help: str = "", **meta) -> Any:  # noqa: A002 - mirrors field()
    """A setting that may change when a run is resumed."""
    return field(default, help, resume=False, **meta)


@dataclasses.dataclass
class CommonTrainConfig:
    """Settings every objective reads. Defaults follow D3PO and Yang et al. 2024, docs/math.md section 11.
    The aliases are the names diffusers' training scripts use (--learning_rate, --max_train_steps,
    --report_to ...): accepted, hidden, with a note."""

    dataset: str = field(
        None,
        "Dataset folder written by `prefkit generate`, with labels from `prefkit label`, or a dataset "
        "published by `prefkit publish` (its folder or Hub id; d3po and dense train on its train split); "
        "for diffusion-dpo any Pick-a-Pic-format dataset: such a folder, a parquet file or a Hub id.",
        panel="Data",
        argument=True,
    )
    out: str = _free(
        None,
        "Output folder: LoRA, checkpoints, metrics.jsonl, config.yaml.",
        panel="Data",
        path=True,
        aliases=("--output_dir",),
    )
    objective: str = field(
        "d3po", ", ".join(f"{row.name} ({row.summary})" for row in OBJECTIVES.values()) + ".", panel="Data"
    )
    labels: str | None = field(
        None,
        "Label set(s) to train on, comma-separated to merge (default: the only one); ddpo/tdpo: one set "
        "with per-sample scores (labels/NAME.scores.jsonl, written by a scorer source).",
        panel="Data",
    )
    model: str | None = field(
        None,
        "Base model (default: the dataset's model). Must be the model that sampled it "
        "(diffusion-dpo: any SD 1.x/2.x, SD3 or FLUX model; required unless the dataset names one).",
        panel="Data",
        aliases=("--pretrained_model_name_or_path",),
    )
    init_lora: str | None = field(
        None,
        "Start from this LoRA (a folder saved by prefkit train: OUT/lora or OUT/checkpoint-N) instead of "
        "a fresh one; same rank and targets. The reference stays the base model.",
        panel="Data",
    )
    lr: float = field(
        3e-5, "AdamW learning rate.", panel="Optimiser", aliases=("--learning_rate", "--learning-rate")
    )
    weight_decay: float | None = field(
        None,
        "AdamW weight decay (default: 1e-4; dense: 2e-3).",
        panel="Optimiser",
        aliases=("--adam_weight_decay",),
    )
    adam_beta1: float = field(0.9, "AdamW beta1.", panel="Optimiser", aliases=("--adam_beta1",))
    adam_beta2: float = field(0.999, "AdamW beta2.", panel="Optimiser", aliases=("--adam_beta2",))
    lr_schedule: str = field(
        "constant",
        "LR schedule after warm-up: constant, linear, cosine.",
        panel="Optimiser",
        aliases=("--lr_scheduler",),
    )
    warmup_steps: int = field(
        0, "Linear warm-up, in optimizer steps.", panel="Optimiser", aliases=("--lr_warmup_steps",)
    )
    max_grad_norm: float = field(
        1.0,
        "Gradient clipping (global L2 norm); 0 turns it off.",
        panel="Optimiser",
        aliases=("--max_grad_norm",),
    )
    max_steps: int = _free(
        100, "Optimizer steps to train.", panel="Optimiser", aliases=("--max_train_steps",)
    )
    batch_size: int = field(
        2,
        "Pairs (ddpo, tdpo: samples) per process per micro-batch (per GPU).",
        panel="Optimiser",
        aliases=("--train_batch_size",),
    )
    grad_accum: int = field(
        1,
        "Micro-batches per optimizer step (global batch = batch-size x processes x grad-accum).",
        panel="Optimiser",
        aliases=("--gradient_accumulation_steps",),
    )
    lora_rank: int = field(4, "LoRA rank r.", panel="LoRA", aliases=("--rank",))
    lora_alpha: float | None = field(None, "LoRA alpha (default: the rank, i.e. scale 1).", panel="LoRA")
    lora_dropout: float = field(0.0, "LoRA dropout.", panel="LoRA")
    lora_targets: str | None = field(
        None,
        "Comma-separated module names for LoRA (default: to_q,to_k,to_v,to_out.0; "
        "plus add_q_proj,add_k_proj,add_v_proj,to_add_out for SD3/FLUX).",
        panel="LoRA",
    )
    device: str = _free(
        "auto",
        "Where training runs: auto (CUDA when present, else the CPU), cpu or cuda; several GPUs: accelerate launch.",
        panel="Run",
    )
    mixed_precision: str = field(
        "no",
        "no, fp16 or bf16 (accelerate autocast; log-probs stay float32).",
        panel="Run",
        aliases=("--mixed_precision",),
    )
    gradient_checkpointing: bool = _free(
        False,
        "Recompute activations in the backward pass to save memory.",
        panel="Run",
        aliases=("--gradient_checkpointing",),
    )
    seed: int = field(0, "Seed of the pair order, step sampling and LoRA initialisation.", panel="Run")
    checkpoint_every: int = _free(
        50,
        "Save a resumable checkpoint every N optimizer steps (0 = only at the end).",
        panel="Run",
        aliases=("--checkpointing_steps",),
    )
    guidance: float | None = field(
        None,
        "CFG scale inside the log-prob (default and required: the dataset's).",
        panel="Sampler (must match the dataset)",
    )
    negative_prompt: str | None = field(
        None,
        "Negative prompt inside the log-prob (default and required: the dataset's).",
        panel="Sampler (must match the dataset)",
    )
    force: bool = _free(
        False,
        "Train even when --guidance / --negative-prompt / --model differ from the dataset's (ddpo, tdpo: or "
        "the stored lp differ from the sampling policy's beyond rounding; the old policy is then live).",
        panel="Run",
    )
    validation_prompts: list[str] = _free(
        help="A prompt sampled with the current LoRA every --validation-every steps (fixed seeds): the images "
        "go to OUT/validation/step-N.png and to the --log-with trackers. Repeat for several.",
        default_factory=list,
        panel="Run",
        flags=("--validation-prompt",),
    )
    validation_every: int = _free(
        0, "Sample the --validation-prompt images every N optimizer steps (0 = never).", panel="Run"
    )
    log_with: str | None = _free(
        None,
        "Also log to accelerate trackers: tensorboard, wandb (comma-separated).",
        panel="Run",
        aliases=("--report_to",),
    )
    resume: bool = _free(False, "Continue from the latest checkpoint in --out (same settings).", panel="Run")
    push_to_hub: str | None = _free(
        None,
        "After training, upload the LoRA with a model card to this Hub model repository OWNER/NAME (created "
        "if absent), as `prefkit publish --lora OUT` does; needs a Hub token (HF_TOKEN or `hf auth login`).",
        panel="Run",
    )
    quiet: bool = _free(False, "No live display.", panel="Run", flags=("--quiet", "-q"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _objective_field(flag) -> tuple[str, Any, Any]:
    """A TrainConfig field of an objective flag, in the help panel of the objectives that read it."""
    panel = "Objective: " + ", ".join(readers(flag.name))
    return flag.name, flag.type, field(flag.default, flag.help, panel=panel)


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    [_objective_field(f) for f in flags().values()],
    bases=(CommonTrainConfig,),
    namespace={
        "__doc__": "Settings of ``prefkit train``: the common ones and every objective's own flags.",
        "__module__": __name__,
    },
)

# the settings a resumed run must share with the interrupted one
RESUME_KEYS = keys_of(TrainConfig, "resume")


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Check the settings and fill in the objective's defaults (nothing is written on bad input)."""
    if not cfg.dataset:
        raise PrefkitError(
            "DATASET is required: a folder written by `prefkit generate`, labelled by `prefkit label`, "
            "or a dataset published by `prefkit publish` (its folder or Hub id)"
        )
    if not cfg.out:
        raise PrefkitError("--out is required: where the LoRA, checkpoints and metrics go")
    if cfg.push_to_hub is not None and not REPO_ID.fullmatch(cfg.push_to_hub):
        raise PrefkitError(
            f"--push-to-hub {cfg.push_to_hub!r}: expected a Hub model repository OWNER/NAME "
            "(letters, digits, '-', '_', '.'), e.g. --push-to-hub me/my-lora"
        )
    # choices are case-insensitive: --objective D3PO, --mixed-precision BF16
    cfg = dataclasses.replace(
        cfg,
        **{
            k: getattr(cfg, k).strip().lower()
            for k in ("objective", "reference", "old_policy", "mixed_precision", "lr_schedule")
        },
    )
    row = objective(cfg.objective)
    choices = {
        "reference": ("live", "stored"),
        "old_policy": ("auto", "stored", "live"),
        "mixed_precision": ("no", "fp16", "bf16"),
        "lr_schedule": ("constant", "linear", "cosine"),
    }
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise PrefkitError(
                f"--{name.replace('_', '-')} {getattr(cfg, name)}: choose {', '.join(allowed[:-1])} or {allowed[-1]}"
            )
    for name in ("max_steps", "batch_size", "grad_accum", "lora_rank"):
        if getattr(cfg, name) < 1:
            raise PrefkitError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if not 0 < cfg.timestep_fraction <= 1:
        raise PrefkitError(f"--timestep-fraction {cfg.timestep_fraction}: must be in (0, 1]")
    if not 0 < cfg.gamma <= 1:
        raise PrefkitError(f"--gamma {cfg.gamma}: must be in (0, 1]")
    if not 0 < cfg.eps < 1:
        raise PrefkitError(f"--eps {cfg.eps}: must be in (0, 1)")
    if cfg.clip_range <= 0 or cfg.adv_clip <= 0:
        raise PrefkitError(f"--clip-range {cfg.clip_range} / --adv-clip {cfg.adv_clip}: must be > 0")
    if cfg.min_prompt_count < 0 or cfg.critic_reset_every < 0:
        raise PrefkitError("--min-prompt-count and --critic-reset-every must be >= 0")
    if cfg.kl_coef < 0:
        raise PrefkitError(f"--kl-coef {cfg.kl_coef}: must be >= 0")
    if cfg.critic_lr <= 0:
        raise PrefkitError(f"--critic-lr {cfg.critic_lr}: must be > 0")
    if cfg.steps_per_pair < 0:
        raise PrefkitError(f"--steps-per-pair {cfg.steps_per_pair}: must be >= 0 (0 = exact)")
    if cfg.resolution is not None and cfg.resolution < 1:
        raise PrefkitError(f"--resolution {cfg.resolution}: must be at least 1")
    for shown, strict in unread_flags(cfg):
        if strict:  # it changes what is optimised: never silently ignored
            raise PrefkitError(f"{shown}, not by --objective {cfg.objective}: leave it out")
    for refused, message in row.checks:
        if refused(cfg):
            raise PrefkitError(message)
    filled = {
        name: value for name, value in row.defaults.items() if getattr(cfg, name) is None
    }  # unset shared settings
    if cfg.lora_alpha is None:
        filled["lora_alpha"] = float(cfg.lora_rank)
    return dataclasses.replace(cfg, **filled)


def unread_flags(cfg) -> list[tuple[str, bool]]:
    """("--flag is read by OBJECTIVES", strict) of each flag given a non-default value that the objective
    does not read: run_train notes the ones that are not strict, resolve refuses the strict ones."""
    own = {f.name for f in objective(cfg.objective).flags}
    return [
        (f"--{name.replace('_', '-')} is read by {' and '.join(readers(name))}", flag.strict)
        for name, flag in flags().items()
        if name not in own and getattr(cfg, name) != flag.default
    ]
