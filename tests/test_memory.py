"""prefkit.memory: the peak of a phase, apart from what came before it (Linux's VmHWM reset)."""

from __future__ import annotations

import sys

import pytest
import torch

from prefkit.memory import MIB, PhasePeak, peak_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak restarts on Linux only")
def test_phase_peak_leaves_out_what_came_before():
    big = torch.ones(400 * MIB // 4)  # 400 MiB, touched: resident
    before = peak_bytes()
    del big  # a large allocation goes back to the system when freed
    phase = PhasePeak("cpu")
    phase.start()
    small = torch.ones(50 * MIB // 4)  # the phase's own 50 MiB
    s = phase.summary()
    assert s["reset"] is True
    # the 400 MiB are in the peak before the phase (Linux syncs the counters lazily: ~1 MiB of slack) ...
    assert s["before_mib"] * MIB >= before - MIB
    # ... and not in the phase's: its peak is what stayed resident plus 50 MiB, well under the 400 MiB
    # that came before (a margin of 100 MiB for the allocator's and the interpreter's own movements)
    assert s["during_mib"] < s["before_mib"] - 250
    assert s["during_mib"] * MIB >= small.numel() * 4
