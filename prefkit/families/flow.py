"""Flow matching: velocity models whose Euler steps are turned into an SDE (docs/math.md section 3)."""

from __future__ import annotations

from typing import Any

from prefkit.families.base import Family, Schedule
from prefkit.math.logprob import flow_sde_step


class FlowFamily(Family):
    """Flow matching (SD3/3.5, FLUX): velocity models, Euler steps turned into an SDE."""

    sampler_kind = "flow_sde"
    prediction = "flow"
    denoiser_name = "transformer"
    lora_context_targets = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

    def schedule(self, num_steps, height, width):
        sch = self.pipe.scheduler
        sch.set_timesteps(**self._timestep_kwargs(num_steps, height, width), device="cpu")
        return Schedule(timesteps=sch.timesteps.clone().float(), sigmas=sch.sigmas.clone().float())

    def _timestep_kwargs(self, num_steps, height, width) -> dict[str, Any]:
        raise NotImplementedError

    def step_distribution(self, x, out, k, schedule, noise):
        s = schedule.sigmas
        return flow_sde_step(x, out, s[k], s[k + 1], noise_level=noise, sigma_max=float(s[1]))
