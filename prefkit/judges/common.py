"""Helpers every judge module shares: device and dtype parsing, RGB conversion.

They live here, not in ``prefkit.judges``, so the judge modules never import their own package
``__init__`` (which imports them back in ``make_judge``): no import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefkit.errors import PrefkitError

DTYPES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise PrefkitError(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def torch_device(name: str):
    """--device: auto (CUDA when present, else the CPU), or any torch device (cpu, cuda, cuda:1 ...)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise PrefkitError(
            f"--device {name!r}: not a torch device (auto, cpu, cuda, cuda:1, ...): {exc}"
        ) from exc


def rgb_images(images: Sequence[Any]) -> list:
    """PIL RGB images from PIL images of any mode or HxWxC arrays."""
    import numpy as np
    from PIL import Image

    out = []
    for image in images:
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        out.append(image if image.mode == "RGB" else image.convert("RGB"))
    return out
