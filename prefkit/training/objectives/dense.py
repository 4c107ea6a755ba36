"""dense: dense-reward DPO with a temporal discount (docs/math.md section 6).

Per pair, all K steps with w_k = gamma^k / sum (--steps-per-pair 0), or --steps-per-pair draws from
Cat(w) with weight 1 / draws each, seeded by (seed, epoch, position); one sigmoid over the weighted sum.
"""

from __future__ import annotations

import torch

from prefkit.math.losses import dense_dpo_loss, gamma_weights, sample_dense_steps
from prefkit.training.batch import Batch, Pair
from prefkit.training.engine import check_finite, sync_context
from prefkit.training.step import TrajectoryPairStep


class Dense(TrajectoryPairStep):
    def trained_steps(self, g, num_steps):
        cfg = self.cfg
        if cfg.steps_per_pair == 0:
            return torch.arange(num_steps), gamma_weights(num_steps, cfg.gamma)
        steps = sample_dense_steps(num_steps, cfg.gamma, cfg.steps_per_pair, g)
        return steps, torch.full((cfg.steps_per_pair,), 1.0 / cfg.steps_per_pair)

    def __call__(self, batch: Batch, sync: bool) -> dict[str, float]:
        cfg, accelerator = self.cfg, self.accelerator
        traj, steps, weights, pair_w = self.fetch(batch)
        ref, ref_means = self.reference(traj, steps)
        S = steps.shape[1]
        with sync_context(accelerator, self.run.net, sync):
            outs = [self.lp_at(traj, steps, j) for j in range(S)]
            lp = Pair.split(torch.stack([lp for lp, _ in outs], dim=1))  # [B, S] each
            res = dense_dpo_loss(
                lp.winner,
                ref.winner,
                lp.loser,
                ref.loser,
                weights.to(self.family.device),
                cfg.beta,
                cfg.clip,
                pair_w,
            )
            # the KL of the steps used, plain mean over them (not gamma-weighted)
            kl = torch.stack([self.kl(d, ref_means, j) for j, (_, d) in enumerate(outs)]).mean()
            loss = res.loss + cfg.kl_coef * kl
            check_finite(loss, accelerator)
            accelerator.backward(loss * (1.0 / cfg.grad_accum))
        stats = {"loss": loss.item(), "accuracy": float((res.logits > 0).float().mean())}
        stats["log_ratio_w"] = (lp.winner - ref.winner).mean().item()
        stats["log_ratio_l"] = (lp.loser - ref.loser).mean().item()
        if cfg.kl_coef > 0:
            stats["kl"] = kl.item()
        return stats
