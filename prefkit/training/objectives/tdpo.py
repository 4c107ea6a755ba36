"""tdpo: DDPO's surrogate with TDPO's temporal advantage A_k = A - V(x_k) (docs/math.md section 9).

The critic (prefkit.critic) sees (x_k, k / K, the prompt's mean embedding) and is trained on
0.5 (V(x_k) - A)^2 by its own AdamW, one step per optimizer step, its gradients averaged over processes by
hand (it is not DDP-wrapped); --critic-reset-every N re-initialises its active neurons (TDPO-R). Its state
goes into every checkpoint and OUT/critic/ holds it at the end. Everything else is ddpo's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prefkit.training.objectives.ddpo import DDPO


class TDPO(DDPO):
    def __init__(self, cfg, run, data):
        from prefkit.critic import TemporalCritic
        from prefkit.training.engine import add_extras

        super().__init__(cfg, run, data)
        self.neurons_reset = 0  # TDPO-R: critic neurons re-initialised in this process's run
        self.step_features: list[torch.Tensor] = []  # the critic's inputs of this optimizer step
        self.critic_in: list[tuple[torch.Tensor, torch.Tensor]] = []  # this micro-batch's (x_k, k / K)
        first = data.items[0]
        cond = data.conditioning(data.samples([(first.shard, first.key)]))
        channels = self.family.latent_shape(data.sampler.height, data.sampler.width)[0]
        g = torch.Generator().manual_seed(cfg.seed)
        self.critic = TemporalCritic(channels, cond.prompt_embeds.shape[-1], generator=g).to(
            self.family.device
        )
        self.critic_opt = torch.optim.AdamW(
            self.critic.parameters(),
            lr=cfg.critic_lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )
        add_extras(run, critic=self.critic, critic_optimizer=self.critic_opt)

    def summary(self):
        return {**super().summary(), "critic_neurons_reset": self.neurons_reset}

    def advantage(self, adv, x, k, traj):
        """TDPO's temporal reward A - V(x_k); the critic's inputs are kept for its own update."""
        frac = (k.float() / self.data.schedule.num_steps).to(self.family.device)
        with torch.no_grad():
            adv_k = adv - self.critic(x, frac, self.prompt_features(traj))
        self.critic_in.append((x, frac))
        return adv_k

    @staticmethod
    def prompt_features(traj) -> torch.Tensor:
        pe, mask = traj.cond.prompt_embeds.float(), traj.cond.prompt_mask
        if mask is None:
            return pe.mean(dim=1)  # [B, H], the critic's prompt input
        m = mask.to(pe.device, pe.dtype)[..., None]  # padded prompts (qwen-image): the mean of the tokens
        return (pe * m).sum(dim=1) / m.sum(dim=1)

    def after_micro_batch(self, traj, adv, scale, sync):
        critic_in, self.critic_in = self.critic_in, []
        return self.critic_backward(critic_in, self.prompt_features(traj), adv, scale, sync)

    def critic_backward(self, critic_in, prompt_feat, adv, scale: float, sync: bool) -> dict[str, float]:
        """The critic's loss on this micro-batch's (x_k, k / K, prompt) -> A; its AdamW steps with the
        policy's (gradients averaged over processes by hand: the critic is not DDP-wrapped)."""
        from prefkit.critic import critic_loss, reset_active_neurons

        cfg, accelerator = self.cfg, self.run.accelerator
        S = len(critic_in)
        xs = torch.cat([x for x, _ in critic_in])  # [S B, C, h, w]
        fracs = torch.cat([f for _, f in critic_in])  # [S B]
        feats = self.critic.features(xs, fracs, prompt_feat.repeat(S, 1))
        values = self.critic.layers(feats).squeeze(1)
        loss = critic_loss(values, adv.repeat(S))
        (loss * scale).backward()
        out = {"critic_loss": loss.item(), "value_mean": values.mean().item()}
        # TDPO-R's active neurons are judged on all the inputs of the optimizer step (every micro-batch)
        self.step_features.append(feats.detach())
        if sync:
            step_features = torch.cat(self.step_features)
            self.step_features = []
            params = list(self.critic.parameters())
            if accelerator.num_processes > 1:
                for p in params:
                    p.grad = accelerator.reduce(p.grad, "mean")
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            self.critic_opt.step()
            self.critic_opt.zero_grad(set_to_none=True)
            step = self.run.state["step"] + 1  # the optimizer step being completed
            if cfg.critic_reset_every and step % cfg.critic_reset_every == 0:
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                self.neurons_reset += reset_active_neurons(
                    self.critic,
                    self.critic_opt,
                    step_features,
                    generator=g,
                    reduce=lambda t: accelerator.reduce(t, "mean"),
                )
        return out

    def save(self, out: Path) -> None:
        """The critic beside the LoRA: OUT/critic/critic.safetensors and config.json (main process)."""
        if not self.accelerator.is_main_process:
            return
        from safetensors.torch import save_file

        folder = out / "critic"
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.critic.state_dict().items()}
        save_file(tensors, str(folder / "critic.safetensors"))
        (folder / "config.json").write_text(json.dumps(self.critic.config, indent=2))
