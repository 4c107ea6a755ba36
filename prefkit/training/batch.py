"""Typed training items and batches. Winner and loser are named fields: the one place where a tensor of
[winners; losers] (one forward pass of 2B rows, as the losses' docstrings require the inputs paired) is
cut into its halves is ``Pair.split``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import torch

from prefkit.math.losses import soft_label_weight

T = TypeVar("T")


class Pair(NamedTuple):
    """A winner's and a loser's value of the same thing (lp, errors, reference lp ...)."""

    winner: Any
    loser: Any

    @classmethod
    def split(cls, both: torch.Tensor) -> Pair:
        """A tensor of 2B rows, the B winners first, as (winners, losers)."""
        b = both.shape[0] // 2
        return cls(both[:b], both[b:])

    def joined(self) -> torch.Tensor:
        return torch.cat([self.winner, self.loser])


def decided(
    labels: Iterable[tuple[Any, float | None]],
) -> tuple[list[tuple[Any, bool, float]], dict[str, int]]:
    """The decided pairs of (row, label_0) in the given order, as (row, first_won, weight) with weight
    |2 label_0 - 1| (docs/math.md section 11); ties (weight 0) and rows without a label are left out and
    counted: {"ties_skipped", "unlabelled_skipped"}."""
    kept, ties, unlabelled = [], 0, 0
    for row, label in labels:
        if label is None:
            unlabelled += 1
            continue
        weight = soft_label_weight(float(label))
        if weight == 0:
            ties += 1
            continue
        kept.append((row, float(label) > 0.5, weight))
    return kept, {"ties_skipped": ties, "unlabelled_skipped": unlabelled}


@dataclass
class TrainPair:
    """One labelled pair of stored trajectories: the winner's and loser's sample keys, its weight, shard."""

    key_w: str
    key_l: str
    weight: float
    shard: int
    pair_id: str


@dataclass
class TrainSample:
    """One scored trajectory: its key, raw score, normalised clipped advantage, shard and prompt."""

    key: str
    score: float
    advantage: float
    shard: int
    prompt: str
    group_id: int


@dataclass
class ImagePair:
    """One decided image pair: its row in the dataset, whether jpg_0 won, and its weight |2 label_0 - 1|."""

    row: int
    first_won: bool
    weight: float
    pair_id: str
    shard: int = 0  # one "shard": the dataset is read row by row (epoch_order shuffles all pairs)


@dataclass
class Trajectories:
    """Stored trajectories of one micro-batch, in the order of one forward batch (for pairs: the B
    winners, then the B losers). ``chains`` [n, K+1, C, h, w] and ``stored_lp`` [n, K] float32 on the
    CPU; ``cond`` the prompts' conditioning on the model's device."""

    chains: torch.Tensor
    stored_lp: torch.Tensor
    cond: Any


@dataclass
class Batch(Generic[T]):
    """One micro-batch as the engine hands it to a step: the items with their (epoch, position)."""

    items: list[T]
    epochs: list[int]
    positions: list[int]

    @classmethod
    def of(cls, raw: list[tuple[T, int, int]]) -> Batch[T]:
        return cls([i for i, _, _ in raw], [e for _, e, _ in raw], [p for _, _, p in raw])

    def __len__(self) -> int:
        return len(self.items)

    def seeds(self) -> list[tuple[int, int]]:
        return list(zip(self.epochs, self.positions, strict=True))
