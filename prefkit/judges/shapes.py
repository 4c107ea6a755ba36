"""``prefkit label --source shapes``: a rule judge for the coloured-shapes world of ``tiny-shapes``.

It reads each picture back from its pixels (prefkit.shapes.analyse: background colour, the shape's
colour, which of circle / square / triangle / diamond it is, its size and position) and scores how well
that matches the caption (prefkit.shapes.score, in [0, 1]: for each attribute the caption asks for,
half for being right and half for how close it is). No model, no GPU: a ground-truth preference signal
for tests, the README and quick experiments.

A caption outside the shapes grammar ("a photo of a cat") is an error naming the prompt, since the
judge cannot say anything about it. ``check`` gives the per-attribute verdicts (the prompt-following
rate of the built-in model is measured with them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefkit import shapes
from prefkit.errors import PrefkitError
from prefkit.judges.common import rgb_images


def parse_or_fail(prompt: str) -> shapes.Caption:
    request = shapes.parse_caption(prompt)
    if request is None:
        raise PrefkitError(
            f"--source shapes cannot judge the prompt {prompt!r}: it reads captions like "
            "'a [small|large] red circle [on the left] on a blue background' (colours: "
            f"{', '.join(shapes.COLOURS)}; shapes: {', '.join(shapes.SHAPES)}); use another --source "
            "for other prompts"
        )
    return request


class ShapesScorer:
    """Scores a picture by how well it shows its caption (colour, shape, background, size, position)."""

    def __init__(self, options=None) -> None:
        if options is not None and options.method not in (None, "score"):
            raise PrefkitError(f"--method {options.method!r}: the shapes judge has one method, score")

    def info(self) -> dict[str, Any]:
        return {"name": "shapes", "model": None, "revision": None, "method": "score", "range": [0.0, 1.0]}

    def check(self, images: Sequence[Any], prompts: Sequence[str]) -> list[dict[str, bool]]:
        """Per picture: which of the requested attributes are right."""
        requests = [parse_or_fail(p) for p in prompts]
        return [
            shapes.check(shapes.analyse(im), r) for im, r in zip(rgb_images(images), requests, strict=True)
        ]

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        requests = [parse_or_fail(p) for p in prompts]
        return [
            shapes.score(shapes.analyse(im), r) for im, r in zip(rgb_images(images), requests, strict=True)
        ]
