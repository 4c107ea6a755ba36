"""THE TABLE of training objectives: one row each (docs/math.md sections 5-10 for their math).

A row says what an objective trains on (its data kind), where its step lives (imported only when it
trains), its paper, the defaults it gives to shared settings, the flags it reads beyond the common ones
(declared once, below, and shared by the rows that list them), and its own checks of the settings. The
rest of the training package (run.py, engine.py, the data kinds) knows no objective by name: it reads
this table. A flag given with a non-default value to an objective whose row does not list it is refused
when it would change what is optimised (``strict``), else noted as ignored.

Adding an objective: its module in prefkit/training/objectives/ (a step class, see d3po.py), its loss in
prefkit/math/losses.py, and its row in OBJECTIVES. Nothing in this file imports torch (the CLI reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# -- the data kinds (prefkit/training/trajectories.py, prefkit/training/images.py) ---------------------

TRAJECTORY_PAIRS = "trajectory-pairs"  # labelled (winner, loser) pairs of stored trajectories
SCORED_TRAJECTORIES = "scored-trajectories"  # stored trajectories with a per-sample score
IMAGE_PAIRS = "image-pairs"  # Pick-a-Pic format: caption, jpg_0, jpg_1, label_0


@dataclass(frozen=True)
class Flag:
    """A setting some objectives read: its TrainConfig field (type, default, help) is built from this."""

    name: str
    type: Any
    default: Any
    help: str
    # given (not the default) to an objective that does not read it: refused when strict (it changes what
    # is optimised, e.g. a KL term), else a one-line note that it is ignored
    strict: bool = False


@dataclass(frozen=True)
class Objective:
    """One row. ``step``: "module:Class" of the objective's step; ``defaults``: values for shared settings
    left unset (None) on the command line; ``checks``: (predicate on the config, message) pairs, each a
    refusal when the predicate is true."""

    name: str
    data: str
    step: str
    paper: str
    summary: str
    flags: tuple[Flag, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    checks: tuple[tuple[Callable[[Any], bool], str], ...] = ()


# -- flags read by some objectives (declared once) ----------------------------------------------------

BETA = Flag(
    "beta",
    float | None,
    None,
    "DPO beta (default: 0.1 for d3po, 10 for dense; diffusion-dpo: 5000 eps models, 100 flow models).",
)
REFERENCE = Flag(
    "reference",
    str,
    "live",
    "Reference log-probs: live (base model, adapters disabled; one gradient-free forward per trained "
    "step, exact in any precision) or stored (from sampling; no extra forward, used only where the "
    "start-up check finds them exact, i.e. float32: in lower precision live is used, with a note). "
    "ddpo/tdpo: see --old-policy; their --kl-coef reference is live.",
)
KL_COEF = Flag(
    "kl_coef",
    float,
    0.0,
    "DPOK's KL regulariser to the reference (base model, adapters off): coefficient of the per-step "
    "Gaussian KL (mean over latent elements); d3po, dense, ddpo, tdpo. 0 = off (no extra forward).",
    strict=True,
)
TIMESTEP_FRACTION = Flag(
    "timestep_fraction",
    float,
    1.0,
    "d3po, ddpo, tdpo: fraction of each trajectory's steps trained on (shuffled per pair / sample).",
)
EPS = Flag("eps", float, 0.1, "d3po: the ratio clip eps (log r clamped to [log(1-eps), log(1+eps)]).")
GAMMA = Flag("gamma", float, 0.9, "dense: temporal discount; step k (k = 0 from noise) weighs gamma^k.")
CLIP = Flag("clip", float, 1e-4, "dense: log-ratio clip c.")
STEPS_PER_PAIR = Flag(
    "steps_per_pair",
    int,
    3,
    "dense: steps drawn from Cat(gamma^k) per pair, shared by winner and loser (0 = exact sum over all steps).",
)
RESOLUTION = Flag(
    "resolution",
    int | None,
    None,
    "diffusion-dpo: images are resized and centre-cropped to this many pixels square "
    "(default: the model's default size).",
)
OLD_POLICY = Flag(
    "old_policy",
    str,
    "auto",
    "ddpo, tdpo: the importance ratio's old policy (the sampling policy: the base model, or the "
    "--init-lora adapter kept frozen). live: recomputed in the training micro-batch in the policy's "
    "own precision (one gradient-free forward per trained step, shared with --kl-coef's when there is "
    "no --init-lora; ratio exactly 1 at the first update); stored: the lp recorded at sampling (no "
    "extra forward; off by the rounding of sampling vs training); auto: stored when the start-up check "
    "finds them exact (float32), else live.",
)
CLIP_RANGE = Flag(
    "clip_range",
    float,
    1e-4,
    "ddpo, tdpo: PPO clip range c of the importance ratio exp(lp_theta - lp_stored) (DDPO: 1e-4).",
)
ADV_CLIP = Flag("adv_clip", float, 5.0, "ddpo, tdpo: normalised advantages are clipped to [-A, A] (DDPO: 5).")
MIN_PROMPT_COUNT = Flag(
    "min_prompt_count",
    int,
    16,
    "ddpo, tdpo: a prompt with at least this many scored samples is normalised by its own mean/std, "
    "one with fewer by the whole dataset's (DDPO's per-prompt stat tracker; 0 = always per prompt).",
)
SCORE_FUNCTION = Flag(
    "score_function",
    bool,
    False,
    "ddpo: the score-function estimator DDPO-SF (loss -A lp_theta; no ratio, no clipping).",
    strict=True,
)
CRITIC_LR = Flag("critic_lr", float, 1e-4, "tdpo: AdamW learning rate of the temporal critic.")
CRITIC_RESET_EVERY = Flag(
    "critic_reset_every",
    int,
    0,
    "tdpo: reset the critic's active neurons every N optimizer steps (TDPO-R); 0 = never.",
)

_REWARD_FLAGS = (OLD_POLICY, CLIP_RANGE, ADV_CLIP, MIN_PROMPT_COUNT, TIMESTEP_FRACTION, KL_COEF)

# -- the table ----------------------------------------------------------------------------------------

OBJECTIVES: dict[str, Objective] = {
    row.name: row
    for row in (
        Objective(
            "d3po",
            TRAJECTORY_PAIRS,
            "prefkit.training.objectives.d3po:D3PO",
            "Yang et al., CVPR 2024 (D3PO)",
            "per-step clamped-ratio DPO",
            flags=(BETA, REFERENCE, EPS, TIMESTEP_FRACTION, KL_COEF),
            defaults={"beta": 0.1, "weight_decay": 1e-4},
        ),
        Objective(
            "dense",
            TRAJECTORY_PAIRS,
            "prefkit.training.objectives.dense:Dense",
            "Yang et al., ICML 2024 (dense-reward DPO)",
            "gamma-weighted dense-reward DPO",
            flags=(BETA, REFERENCE, GAMMA, CLIP, STEPS_PER_PAIR, KL_COEF),
            defaults={"beta": 10.0, "weight_decay": 2e-3},
        ),
        Objective(
            "diffusion-dpo",
            IMAGE_PAIRS,
            "prefkit.training.objectives.diffusion_dpo:DiffusionDPO",
            "Wallace et al., CVPR 2024 (Diffusion-DPO)",
            "Diffusion-DPO on final image pairs in Pick-a-Pic format: caption, jpg_0, jpg_1, label_0",
            flags=(BETA, REFERENCE, RESOLUTION),
            defaults={"weight_decay": 1e-4},  # beta: per model family, once the model is loaded
            checks=(
                (
                    lambda c: c.reference != "live",
                    "--reference stored: diffusion-dpo has no stored log-probs; use --reference live",
                ),
                (
                    lambda c: c.negative_prompt is not None,
                    "--negative-prompt: diffusion-dpo trains conditional predictions only (no CFG)",
                ),
            ),
        ),
        Objective(
            "ddpo",
            SCORED_TRAJECTORIES,
            "prefkit.training.objectives.ddpo:DDPO",
            "Black et al., ICLR 2024 (DDPO)",
            "DDPO's clipped importance-sampled policy gradient on the label set's per-sample scores",
            flags=(*_REWARD_FLAGS, SCORE_FUNCTION),
            defaults={"weight_decay": 1e-4},
        ),
        Objective(
            "tdpo",
            SCORED_TRAJECTORIES,
            "prefkit.training.objectives.tdpo:TDPO",
            "Zhang et al., ICML 2024 (TDPO)",
            "ddpo with TDPO's temporal critic giving per-step advantages",
            flags=(*_REWARD_FLAGS, CRITIC_LR, CRITIC_RESET_EVERY),
            defaults={"weight_decay": 1e-4},
        ),
    )
}


def objective(name: str) -> Objective:
    """The row of ``name``; an unknown name is an error listing the table."""
    from prefkit.errors import PrefkitError

    if name not in OBJECTIVES:
        raise PrefkitError(f"--objective {name}: choose {' or '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def flags() -> dict[str, Flag]:
    """Every objective flag once, in table order, with the objectives that read it."""
    seen: dict[str, Flag] = {}
    for row in OBJECTIVES.values():
        for f in row.flags:
            if seen.setdefault(f.name, f) is not f:
                raise AssertionError(f"flag {f.name} is declared twice in the objectives table")
    return seen


def readers(flag: str) -> list[str]:
    """The objectives whose rows list ``flag``."""
    return [row.name for row in OBJECTIVES.values() if any(f.name == flag for f in row.flags)]
