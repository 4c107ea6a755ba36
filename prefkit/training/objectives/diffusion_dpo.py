"""diffusion-dpo: Diffusion-DPO on pairs of final images (docs/math.md section 7).

Per micro-batch of B pairs (prefkit.training.images): one (t, e) per pair, seeded by (seed, epoch,
position) and shared by winner and loser; conditional only (no CFG). The squared errors, mean-reduced per
sample, of the policy (LoRA, with gradient, through the DDP-prepared net) and of the reference (adapters
off, no gradient) go into ``diffusion_dpo_loss``:

  eps families (SD 1.x/2.x): t ~ U{0..T-1}, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e, target e. A
      v-prediction model's output is converted to eps (``Family.model_output``), so its error is an
      eps error too.
  flow families (SD3, FLUX): s ~ logit-normal(0, 1), x_s = (1 - s) x0 + s e, target v = e - x0; the
      denoiser's timestep input is s * 1000 (FLUX: s).

beta defaults to 5000 (eps) or 100 (flow).
"""

from __future__ import annotations

import dataclasses

import torch

from prefkit.math.losses import diffusion_dpo_loss, eps_noising, flow_noising, logit_normal_sigmas
from prefkit.training.batch import Batch, Pair
from prefkit.training.engine import check_finite, seeded_generator, sync_context
from prefkit.training.step import ObjectiveStep

BETA = {"epsilon": 5000.0, "flow": 100.0}  # by what the family predicts


class DiffusionDPO(ObjectiveStep):
    @classmethod
    def configure(cls, cfg, family):
        return cfg if cfg.beta is not None else dataclasses.replace(cfg, beta=BETA[family.prediction])

    def __init__(self, cfg, run, data):
        super().__init__(cfg, run, data)
        if self.family.prediction == "epsilon":
            # DDPM training noise: alphas_cumprod of the scheduler's config (the SD family keeps the betas)
            self.alphas_cumprod = run.pipe.scheduler.alphas_cumprod.float()
            self.num_train = run.pipe.scheduler.config.num_train_timesteps

    def summary(self):
        return {"reference": "live", "beta": self.cfg.beta}

    def noised(self, x0: torch.Tensor, batch: Batch):
        """(x_t, target, schedule) of [winners; losers]: the same (t, e) for a pair's two images."""
        from prefkit.families import Schedule

        dev = self.family.device
        ddim = self.family.prediction == "epsilon"
        noise, draws = [], []
        for epoch, position in batch.seeds():
            g = seeded_generator(self.cfg.seed, epoch, position)
            draws.append(
                torch.randint(0, self.num_train, (1,), generator=g) if ddim else logit_normal_sigmas(1, g)
            )
            noise.append(torch.randn(x0.shape[1:], generator=g))
        d = torch.cat(draws)
        e = torch.stack(noise).to(dev)
        e, d = torch.cat([e, e]), torch.cat([d, d])
        if ddim:
            a = self.alphas_cumprod[d]
            return eps_noising(x0, e, a.to(dev)), e, Schedule(timesteps=d.long(), alphas=a.to(dev))
        x_t, target = flow_noising(x0, e, d.to(dev))
        return x_t, target, Schedule(timesteps=d.float() * 1000)

    def __call__(self, batch: Batch, sync: bool) -> dict[str, float]:
        cfg, accelerator, family = self.cfg, self.accelerator, self.family
        x0, captions = self.data.fetch(batch.items)
        x0 = x0.joined()  # [2B, C, h, w]: winners, then losers
        cond = family.encode(captions + captions, None)  # conditional only
        x_t, target, schedule = self.noised(x0, batch)
        k = torch.arange(x0.shape[0])
        pair_w = torch.tensor([p.weight for p in batch.items], device=family.device)

        def errors() -> Pair:
            with accelerator.autocast():
                pred = family.model_output(x_t, k, schedule, cond, self.data.guidance)
            return Pair.split((pred.float() - target).pow(2).mean(dim=tuple(range(1, target.ndim))))

        with torch.no_grad(), self.reference_mode():
            ref = errors()
        with sync_context(accelerator, self.run.net, sync):
            err = errors()
            res = diffusion_dpo_loss(err.winner, ref.winner, err.loser, ref.loser, cfg.beta, pair_w)
            check_finite(res.loss, accelerator)
            accelerator.backward(res.loss * (1.0 / cfg.grad_accum))
        return {
            "loss": res.loss.item(),
            "accuracy": float((res.logits > 0).float().mean()),
            "err_diff_w": (err.winner - ref.winner).mean().item(),
            "err_diff_l": (err.loser - ref.loser).mean().item(),
            "ref_err_w": ref.winner.mean().item(),
            "ref_err_l": ref.loser.mean().item(),
        }
