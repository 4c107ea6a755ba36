"""DDPO's JPEG compressibility reward as a ``prefkit label --source jpeg`` scorer.

DDPO (Black et al. 2023, github.com/kvablack/ddpo-pytorch, ``ddpo_pytorch/rewards.py``) saves every image
with PIL as JPEG at quality 95 and measures ``buffer.tell() / 1000``: the file size in kB of 1000 bytes
(not KiB). ``jpeg_incompressibility`` returns that size, ``jpeg_compressibility`` its negation. Flow-GRPO's
copy divides the negated size by a further 500; prefkit keeps DDPO's unscaled figure (pairs only depend on
the ordering, and ``--tie-margin`` is then in kB).

Methods (``--method``): ``compressibility`` (default; score = -size_kB, smaller files win) and
``incompressibility`` (score = +size_kB, larger files win).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.judges.common import rgb_images

METHODS = ("compressibility", "incompressibility")
QUALITY = 95  # DDPO: image.save(buffer, format="JPEG", quality=95)


def jpeg_size_kb(image: Any, quality: int = QUALITY) -> float:
    """Size in kB (1000 bytes) of ``image`` (PIL image or HxWx3 uint8 array) saved by PIL as JPEG."""
    buffer = io.BytesIO()
    rgb_images([image])[0].save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


class JpegScorer:
    """Scores images by their JPEG size at quality 95 (DDPO); prompts are ignored. Needs no model."""

    def __init__(self, options) -> None:
        method = options.method or "compressibility"
        if method not in METHODS:
            raise PrefkitError(
                f"--method {options.method!r} is not a jpeg method: choose compressibility (smaller JPEG wins, "
                "the default) or incompressibility (larger JPEG wins)"
            )
        self.method = method
        self.sign = -1.0 if method == "compressibility" else 1.0

    def info(self) -> dict[str, Any]:
        return {
            "name": "jpeg",
            "model": None,
            "revision": None,
            "method": self.method,
            "quality": QUALITY,
            "unit": "kB (1000 bytes)",
        }

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        return [self.sign * jpeg_size_kb(image) for image in images]
