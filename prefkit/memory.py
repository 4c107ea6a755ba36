"""Peak memory of a phase of this process: what ``train`` reports in summary.json and ``bench`` measures.

On CUDA the figure is ``torch.cuda.max_memory_allocated`` (tensors only). On the CPU it is the process's
peak resident set, VmHWM of /proc/self/status (interpreter, libraries, weights, activations). Linux lets a
process reset its own high-water mark to the current resident set (writing 5 to /proc/self/clear_refs), so
the peak of the training steps can be told apart from the peak of loading the model, which on the CPU
holds the memory-mapped weight files and their aligned copies at the same time (prefkit.families).

Not ``ru_maxrss``: Linux carries it over from the parent across fork + exec, and it cannot be reset.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch

MIB = 2**20


def _is_cuda(device: Any) -> bool:
    return torch.device(device).type == "cuda"


def peak_bytes(device: Any = "cpu") -> int:
    """The peak since the process started or since the last successful :func:`reset_peak`."""
    if _is_cuda(device):
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def reset_peak(device: Any = "cpu") -> bool:
    """Start a new peak from what is in use now; False where the platform cannot (the peak then keeps
    counting from the process's start)."""
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PhasePeak:
    """The peak before a phase (``before``) and during it: ``start()`` when the phase begins, then
    ``summary()``. Where the peak cannot be reset, ``during`` includes everything before (``reset``
    False says so)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.before: int | None = None
        self.reset = False

    def start(self) -> None:
        self.before = peak_bytes(self.device)
        self.reset = reset_peak(self.device)

    def summary(self) -> dict[str, Any]:
        cuda = _is_cuda(self.device)
        return {
            "measure": "torch.cuda.max_memory_allocated" if cuda else "peak resident set (VmHWM)",
            "before_mib": None if self.before is None else round(self.before / MIB, 1),
            "during_mib": round(peak_bytes(self.device) / MIB, 1),
            "reset": self.reset,
        }
