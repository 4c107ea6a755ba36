"""What this machine runs prefkit with: versions, devices, trackers (``prefkit env``, and the environment
block of ``prefkit bench gpu``), so that a bug report or a published figure carries it."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import importlib.util
import platform
import subprocess
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "datasets", "webdataset")
TRACKERS = ("tensorboard", "wandb")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return name


def commit() -> str | None:
    """The git commit of this prefkit checkout (None when installed from a wheel)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        )
        return res.stdout.strip() or None
    return None


def environment(device: str | None = None) -> dict[str, Any]:
    """date, device (``device``, else cuda when present), its name, torch and CUDA, the libraries' and
    prefkit's versions, the commit, the CUDA devices and whether they do bfloat16, installed trackers."""
    import torch

    from prefkit import __version__

    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": gpus[0] if device == "cuda" and gpus else cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": _version("diffusers"),
        "prefkit": __version__,
        "commit": commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cuda_available": cuda,
        "gpus": gpus,
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "trackers": {name: importlib.util.find_spec(name) is not None for name in TRACKERS},
    }
