"""How many processes `accelerate launch` started, and whether they must run on the CPU.

``PartialState()`` / ``Accelerator()`` alone ignore ``accelerate launch --cpu`` in some paths
(``ACCELERATE_USE_CPU`` is read only by ``Accelerator``), and in a multi-process launch on a machine
without CUDA they find no backend and report each process as the only one: each would then do all the
work (write every shard, train alone) into the same output. So the CPU (gloo) is asked for explicitly
in those cases, and a launch whose process count still does not add up is an error.
"""

from __future__ import annotations

from prefkit.errors import PrefkitError

DEVICES = ("auto", "cpu", "cuda")


def launch_world(device: str = "auto") -> tuple[int, bool]:
    """(processes the launcher started, whether accelerate must be told to use the CPU). ``device``
    (--device): auto = CUDA when present, as accelerate decides; cpu forces the CPU; cuda requires it."""
    import torch
    from accelerate.utils import get_int_from_env, parse_flag_from_env

    if device not in DEVICES:
        raise PrefkitError(
            f"--device {device}: choose auto, cpu or cuda (pick the GPUs with CUDA_VISIBLE_DEVICES and "
            "accelerate launch)"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise PrefkitError(
            "--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)"
        )
    world = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    cpu = (
        device == "cpu"
        or parse_flag_from_env("ACCELERATE_USE_CPU")
        or (world > 1 and not torch.cuda.is_available())
    )
    return world, cpu


def check_world(num_processes: int, world: int) -> None:
    if num_processes != world:
        raise PrefkitError(
            f"launched as {world} processes, but accelerate set up {num_processes}; "
            "check the accelerate launch options (--multi_gpu, --num_processes)"
        )
