"""What every objective's step is: the interface run.py drives, and the pieces the trajectory objectives
share (one transition's log-prob, the reference's log-probs, the stored-lp start-up check).

An objective module defines one subclass of ``ObjectiveStep``:
  configure(cfg, family)  class method: settings that depend on the model family (default: unchanged)
  __init__(cfg, run, data) the run (prefkit.training.engine.Run) and its data (the row's data kind)
  prepare()               start-up checks once the LoRA exists; returns entries for summary.json
  __call__(batch, sync)   forward and backward of one micro-batch (prefkit.training.batch.Batch); returns
                          its metrics; ``sync``: the last micro-batch of an optimizer step (DDP all-reduce)
  save(out)               anything besides the LoRA (e.g. TDPO's critic), main process
"""

from __future__ import annotations

from typing import Any

import torch

from prefkit.training.batch import Batch, Pair, Trajectories


class ObjectiveStep:
    unit = "pairs"  # what an item is, for the throughput metric ({unit}_per_s)

    def __init__(self, cfg, run, data):
        self.cfg, self.run, self.data = cfg, run, data
        self.family = run.family
        self.accelerator = run.accelerator

    @classmethod
    def configure(cls, cfg, family):
        return cfg

    def prepare(self) -> dict[str, Any]:
        return {}

    def __call__(self, batch: Batch, sync: bool) -> dict[str, float]:
        raise NotImplementedError

    def save(self, out) -> None:
        return None

    # -- the trajectory objectives' shared pieces ----------------------------------------------------

    def transitions(self, traj: Trajectories, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_k, x_{k+1}) of every row of ``traj`` at its step k[row], on the model's device."""
        rows = torch.arange(len(k))
        dev = self.family.device
        return traj.chains[rows, k].to(dev), traj.chains[rows, k + 1].to(dev)

    def step_lp(self, x, x_next, k, cond):
        """(lp of x_next, the step's Gaussian) of the network as it is now (policy, or under a mode)."""
        from prefkit.math.logprob import gaussian_logprob
        from prefkit.sampling import step_distribution

        with self.accelerator.autocast():
            dist = step_distribution(self.family, x, k, self.data.schedule, cond, self.data.sampler)
        return gaussian_logprob(x_next, dist.mean, dist.std), dist

    def reference_mode(self):
        from prefkit.training.lora import reference_mode

        return reference_mode(self.run.denoiser)

    def check_stored_lp(self, samples: list[dict], policy):
        """Measure the stored lp of ``samples`` against ``policy()`` recomputed live in this run's precision
        (prefkit.training.stored); returns the measurement."""
        from prefkit.training.stored import check_stored_lp, coarser, compute_precision

        sampled = self.data.manifest["model"]["dtype"]
        trained = compute_precision(
            self.family.dtype, self.accelerator.mixed_precision, self.accelerator.device
        )
        return check_stored_lp(
            self.family,
            self.data.schedule,
            self.data.sampler,
            samples,
            self.data.conditioning,
            coarser(sampled, trained),
            self.accelerator.autocast,
            policy,
        )


class TrajectoryPairStep(ObjectiveStep):
    """The objectives on labelled pairs of stored trajectories (d3po, dense): per pair, the steps it trains
    on (``trained_steps``, seeded by (seed, epoch, position)), the winners' and losers' trajectories in one
    forward batch, and the reference's lp of those steps -- live (the base model: adapters off, no
    gradient) or stored (the lp recorded at sampling, where the start-up check finds them exact)."""

    def __init__(self, cfg, run, data):
        super().__init__(cfg, run, data)
        self.reference_source = cfg.reference  # "live", or "stored" where the start-up check allows
        self.check = None

    def trained_steps(self, g: torch.Generator, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(step indices [S], their weights [S]) of one pair."""
        raise NotImplementedError

    def prepare(self) -> None:
        """--reference stored: the stored lp must BE the reference's -- same model, scheduler, guidance and
        negative prompt, no LoRA at sampling (else refused) -- and a live recomputation of a few
        transitions must agree within the precision's rounding (else refused). Where they are consistent
        but not exact (a precision below float32) the steps use the live reference, which is exact in any
        precision, and a one-line note says so."""
        from prefkit.errors import PrefkitError
        from prefkit.progress import note

        if self.reference_source != "stored":
            return
        problems = self.data.stored_lp_problems()
        if not problems:
            p = self.data.items[0]
            self.check = self.check_stored_lp(
                self.data.samples([(p.shard, p.key_w), (p.shard, p.key_l)]), self.reference_mode
            )
            if not self.check.consistent:
                problems.append(
                    f"a live recomputation of the reference lp differs beyond rounding: {self.check.describe()}"
                )
        if problems:
            raise PrefkitError(
                "--reference stored refused: " + "; ".join(problems) + ". Use --reference live (the default)."
            )
        if not self.check.exact:
            self.reference_source = "live"  # config.yaml keeps the requested "stored"
            note(
                self.accelerator.is_main_process,
                f"--reference stored: the stored lp are not exact in {self.check.precision} "
                f"({self.check.describe()}); training with --reference live (one gradient-free forward per "
                "step, exact in any precision)",
            )

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reference": self.reference_source}
        if self.check is not None:
            out["stored_lp_check"] = self.check.to_dict()
        return out

    def fetch(self, batch: Batch):
        """(trajectories of the B winners then the B losers, trained steps [B, S], step weights [B, S],
        pair weights [B]). A winner and its loser come from one shard and are read together."""
        from prefkit.training.engine import seeded_generator

        K = self.data.schedule.num_steps
        chosen = [self.trained_steps(seeded_generator(self.cfg.seed, e, pos), K) for e, pos in batch.seeds()]
        steps = torch.stack([s for s, _ in chosen])
        weights = torch.stack([w for _, w in chosen])
        read = self.data.samples([(p.shard, key) for p in batch.items for key in (p.key_w, p.key_l)])
        traj = self.data.trajectories(read[0::2] + read[1::2])
        pair_w = torch.tensor([p.weight for p in batch.items], device=self.family.device)
        return traj, steps, weights, pair_w

    def lp_at(self, traj: Trajectories, steps: torch.Tensor, j: int):
        """(lp [2B], the step's Gaussian) of the j-th trained step of every winner and loser."""
        k = torch.cat([steps[:, j], steps[:, j]])  # [2B]
        x, x_next = self.transitions(traj, k)
        return self.step_lp(x, x_next, k, traj.cond)

    def reference(self, traj: Trajectories, steps: torch.Tensor):
        """(the reference's lp of the trained steps, a Pair of [B, S]; its step means, one per trained step,
        when --kl-coef needs them, else []). Stored, or the base model (adapters off), no gradient."""
        S = steps.shape[1]
        kl_on = self.cfg.kl_coef > 0
        if self.reference_source == "stored":
            ref = traj.stored_lp.gather(1, torch.cat([steps, steps])).to(self.family.device)
            means = []
            if kl_on:
                with torch.no_grad(), self.reference_mode():
                    means = [self.lp_at(traj, steps, j)[1].mean for j in range(S)]
            return Pair.split(ref), means
        with torch.no_grad(), self.reference_mode():
            outs = [self.lp_at(traj, steps, j) for j in range(S)]
        ref = torch.stack([lp for lp, _ in outs], dim=1)  # [2B, S]
        return Pair.split(ref), ([d.mean for _, d in outs] if kl_on else [])

    def kl(self, dist, ref_means: list, j: int) -> torch.Tensor:
        """DPOK's KL of the j-th trained step, averaged over the winners' and losers' samples (0 when off)."""
        from prefkit.math.losses import gaussian_step_kl

        if self.cfg.kl_coef <= 0:
            return torch.zeros((), device=self.family.device)
        return gaussian_step_kl(dist.mean, ref_means[j], dist.std).mean()
