"""AI and rule judges for ``prefkit label --source ...``.

Two kinds of judge:

* a :class:`Scorer` gives every sample a scalar score (higher is better); pairs are then formed within
  each prompt group by ``prefkit.label_sets.pairs_from_scores`` (``--pairs``, ``--tie-margin``), and the
  scores are kept in ``labels/NAME.scores.jsonl``;
* a :class:`PairJudge` compares two images of one prompt directly (e.g. a multi-image LLaVA asked in
  both orders).

``make_judge(options)`` builds the judge named by ``options.source``. Heavy imports happen inside the
judges' constructors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefkit.errors import PrefkitError
from prefkit.judges.common import DTYPES, rgb_images, torch_device, torch_dtype  # noqa: F401 (re-exported)


@dataclass
class JudgeOptions:
    """The ``prefkit label`` options a judge may use (each judge documents which)."""

    source: str
    model: str | None = None  # hub id or local folder of the judge model
    revision: str | None = None
    processor: str | None = None  # hub id or folder of the processor, where it differs from the model
    weights: str | None = None  # e.g. the aesthetic MLP's weights file
    method: str | None = (
        None  # judge-specific: jpeg compressibility|incompressibility; llava vqascore|pairwise|bertscore
    )
    template: str | None = None  # the question / prompt template, where the judge asks one
    bert_model: str | None = None  # llava bertscore: BERTScore's text encoder (hub id or local folder)
    bert_layer: int | None = None  # llava bertscore: its layer (default: bert-score's tuned one)
    device: str = "auto"  # CUDA when present
    dtype: str = "float32"
    batch_size: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


class Scorer(Protocol):
    def info(self) -> dict[str, Any]:
        """Recorded in every label's ``judge``: name, model, revision, method, template (where they apply)."""

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        """One float per (PIL image, prompt); higher is better."""


class PairJudge(Protocol):
    def info(self) -> dict[str, Any]: ...

    def compare(self, pairs: Sequence[tuple[Any, Any, str]]) -> list[dict[str, Any]]:
        """For each (image_0, image_1, prompt): {"choice": "0" | "1" | "tie" | None, ...details}.
        None means no usable verdict (e.g. the two orders disagreed); details go into ``judge``."""


AI_SOURCES = ("llava", "jpeg", "aesthetic", "pickscore", "hps", "imagereward", "shapes")


def make_judge(options: JudgeOptions) -> Scorer | PairJudge:
    """The judge for ``options.source``: one of AI_SOURCES, or ``python:module:function``."""
    src = options.source
    if src == "jpeg":
        from prefkit.judges.jpeg import JpegScorer

        return JpegScorer(options)
    if src == "shapes":
        from prefkit.judges.shapes import ShapesScorer

        return ShapesScorer(options)
    if src in ("aesthetic", "pickscore"):
        from prefkit.judges import clip

        return clip.AestheticScorer(options) if src == "aesthetic" else clip.PickScoreScorer(options)
    if src == "hps":
        from prefkit.judges.hps import HPSScorer

        return HPSScorer(options)
    if src == "imagereward":
        from prefkit.judges.imagereward import ImageRewardScorer

        return ImageRewardScorer(options)
    if src == "llava":
        from prefkit.judges.llava import make_llava_judge

        return make_llava_judge(options)
    if src.startswith("python:"):
        from prefkit.judges.custom import CustomScorer

        return CustomScorer(options)
    raise PrefkitError(
        f"--source {src!r}: unknown; AI sources: {', '.join(AI_SOURCES)}, python:module:function; "
        "human labels: human (with --input FILE)"
    )


def is_pair_judge(judge: Any) -> bool:
    return hasattr(judge, "compare")
