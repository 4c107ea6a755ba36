"""The policy's LoRA: added to the denoiser, saved in diffusers format, loaded back (--init-lora), and the
two other networks the objectives need without a second copy of the model: the reference (the same network
with its adapters disabled, docs/math.md section 12) and the sampling policy of --init-lora (a second,
frozen peft adapter)."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch

from prefkit.errors import PrefkitError

DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _prefix(family) -> str:
    """The component name of the LoRA keys in a diffusers LoRA file: unet. or transformer."""
    return family.denoiser_name + "."


def add_lora(denoiser: torch.nn.Module, cfg, family) -> None:
    """A fresh LoRA (gaussian A, zero B: the policy starts as the base model) on the attention projections
    (--lora-targets), the rest of the denoiser frozen."""
    from peft import LoraConfig

    targets = (
        [t.strip() for t in cfg.lora_targets.split(",")]
        if cfg.lora_targets
        else DEFAULT_TARGETS + list(family.lora_context_targets)
    )
    present = {n.rsplit(".", 1)[-1] for n, _ in denoiser.named_modules()} | {
        n for n, _ in denoiser.named_modules()
    }
    targets = [t for t in targets if t in present or any(n.endswith("." + t) for n in present)]
    if not targets:
        raise PrefkitError("--lora-targets: none of the modules exist in this denoiser")
    denoiser.requires_grad_(False)
    denoiser.add_adapter(
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=targets,
        )
    )


@contextlib.contextmanager
def reference_mode(denoiser: torch.nn.Module):
    """The reference = the base model: the same network with its LoRA adapters disabled (docs/math.md section 12).
    ``disable_adapters`` turns requires_grad off on the LoRA weights; they are restored in finally."""
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    denoiser.disable_adapters()
    try:
        yield
    finally:
        denoiser.enable_adapters()
        for p in trainable:
            p.requires_grad_(True)


def lora_state(denoiser) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(denoiser).items()}


def save_lora(pipe, denoiser, folder: Path) -> None:
    """The LoRA in diffusers format: ``pipe.load_lora_weights(folder)`` loads it and reproduces the
    policy exactly (tests/training/test_lora_io.py). The peft state dict is saved as is: running it through
    ``convert_state_dict_to_diffusers`` first turns SD3's attention keys into the old ``lora.down/up``
    names, which ``load_lora_weights`` then silently skips. The LoraConfig goes along as the file's
    adapter metadata: without it the loader assumes lora_alpha = rank, and a LoRA trained with another
    --lora-alpha would load at the wrong scale."""
    layers = lora_state(denoiser)
    name = "unet" if hasattr(pipe, "unet") else "transformer"
    kw = {
        f"{name}_lora_layers": layers,
        f"{name}_lora_adapter_metadata": denoiser.peft_config["default"].to_dict(),
    }
    type(pipe).save_lora_weights(str(folder), **kw, safe_serialization=True)


def _read_lora(folder: str | Path, family) -> tuple[Path, dict[str, torch.Tensor]]:
    """The weights of a LoRA folder prefkit train wrote, keyed as peft keys them (component prefix off)."""
    from safetensors.torch import load_file

    path = Path(folder).expanduser() / "pytorch_lora_weights.safetensors"
    if not path.is_file():
        raise PrefkitError(
            f"--init-lora {folder}: no pytorch_lora_weights.safetensors there; give the lora/ folder (or a "
            "checkpoint-N/ folder) that prefkit train wrote"
        )
    prefix = _prefix(family)
    return path, {k.removeprefix(prefix): v for k, v in load_file(str(path)).items()}


def load_init_lora(denoiser, folder: str | Path, family) -> None:
    """--init-lora: load a LoRA saved by prefkit train (OUT/lora or OUT/checkpoint-N, diffusers format)
    into the LoRA just added to ``denoiser``. The two must match key for key and shape for shape (same
    --lora-rank and targets) and in scale (same --lora-alpha, read from the file's adapter metadata);
    anything else is an error, never a partial load. The adapters stay separate: the reference is still
    the network with them disabled, i.e. the base model."""
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open

    path, saved = _read_lora(folder, family)
    prefix = _prefix(family)
    current = lora_state(denoiser)
    missing = sorted(current.keys() - saved.keys())
    extra = sorted(saved.keys() - current.keys())
    shapes = [k for k in sorted(current.keys() & saved.keys()) if current[k].shape != saved[k].shape]
    config = denoiser.peft_config["default"]
    problems = []
    if missing or extra:
        problems.append(
            f"{len(missing)} of this run's LoRA weights are not in the file"
            + (f" (e.g. {missing[0]})" if missing else "")
            + f" and {len(extra)} of the file's are not in this run"
            + (f" (e.g. {extra[0]})" if extra else "")
        )
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} weights differ in shape (e.g. {k}: file {list(saved[k].shape)}, "
            f"this run {list(current[k].shape)} with --lora-rank {config.r})"
        )
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "lora_adapter_metadata" in meta:
        info = json.loads(meta["lora_adapter_metadata"])
        alpha = info.get(f"{prefix}lora_alpha", info.get("lora_alpha"))
        if alpha is not None and float(alpha) != float(config.lora_alpha):
            problems.append(f"the file's lora_alpha {alpha} != this run's --lora-alpha {config.lora_alpha}")
    if problems:
        raise PrefkitError(
            f"--init-lora {folder}: does not match this run's LoRA: "
            + "; ".join(problems)
            + ". Train with the same --lora-rank, --lora-alpha and --lora-targets as the run that saved it."
        )
    set_peft_model_state_dict(denoiser, {k: saved[k] for k in current})


SAMPLER_ADAPTER = "sampler"


def add_sampling_adapter(denoiser, folder: str | Path, family) -> None:
    """The --init-lora weights as a second, frozen peft adapter ``sampler`` (the old policy when it is
    recomputed live); the trained adapter ``default`` stays the active one. load_init_lora has checked the
    file against this run's LoRA."""
    from peft.utils import set_peft_model_state_dict

    _, saved = _read_lora(folder, family)
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    denoiser.add_adapter(copy.deepcopy(denoiser.peft_config["default"]), adapter_name=SAMPLER_ADAPTER)
    set_peft_model_state_dict(denoiser, saved, adapter_name=SAMPLER_ADAPTER)
    denoiser.set_adapter("default")
    denoiser.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)


@contextlib.contextmanager
def adapter_mode(denoiser, name: str):
    """Run with adapter ``name`` active instead of ``default``; peft's set_adapter makes the active adapter
    trainable: the trainable parameters are restored in finally (as reference_mode)."""
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    denoiser.set_adapter(name)
    try:
        yield
    finally:
        denoiser.set_adapter("default")
        denoiser.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
