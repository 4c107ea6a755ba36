"""d3po: D3PO's per-step DPO with a clamped ratio (docs/math.md section 5).

Per pair, the first int(K * timestep_fraction) steps of a permutation seeded by (seed, epoch, position)
are trained, one sigmoid per step; forward and backward go step by step, so the activations of one
step are alive at a time.
"""

from __future__ import annotations

import torch

from prefkit.math.losses import d3po_loss
from prefkit.training.batch import Batch, Pair
from prefkit.training.engine import check_finite, sync_context
from prefkit.training.step import TrajectoryPairStep


class D3PO(TrajectoryPairStep):
    def trained_steps(self, g, num_steps):
        n = max(1, int(num_steps * self.cfg.timestep_fraction))
        return torch.randperm(num_steps, generator=g)[:n], torch.full((n,), 1.0 / n)

    def __call__(self, batch: Batch, sync: bool) -> dict[str, float]:
        cfg, accelerator = self.cfg, self.accelerator
        traj, steps, _, pair_w = self.fetch(batch)
        ref, ref_means = self.reference(traj, steps)
        S = steps.shape[1]
        scale = 1.0 / cfg.grad_accum
        stats = {"loss": 0.0, "accuracy": 0.0, "log_ratio_w": 0.0, "log_ratio_l": 0.0}
        if cfg.kl_coef > 0:
            stats["kl"] = 0.0
        margins = torch.zeros(len(batch), device=self.family.device)
        for j in range(S):
            with sync_context(accelerator, self.run.net, sync and j == S - 1):
                lp_both, dist = self.lp_at(traj, steps, j)
                lp = Pair.split(lp_both)
                res = d3po_loss(
                    lp.winner[:, None],
                    ref.winner[:, j : j + 1],
                    lp.loser[:, None],
                    ref.loser[:, j : j + 1],
                    cfg.beta,
                    cfg.eps,
                    pair_w,
                )
                kl = self.kl(dist, ref_means, j)
                loss = res.loss + cfg.kl_coef * kl
                check_finite(loss, accelerator)
                accelerator.backward(loss * (scale / S))
            stats["loss"] += loss.item() / S
            if cfg.kl_coef > 0:
                stats["kl"] += kl.item() / S
            ratio_w = lp.winner - ref.winner[:, j]
            ratio_l = lp.loser - ref.loser[:, j]
            margins += (ratio_w - ratio_l).detach()
            stats["log_ratio_w"] += ratio_w.mean().item() / S
            stats["log_ratio_l"] += ratio_l.mean().item() / S
        stats["accuracy"] = float((margins > 0).float().mean())
        return stats
