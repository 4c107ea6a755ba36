"""Stable Diffusion 3/3.5: SD3Transformer2DModel, two CLIPs and a T5."""

from __future__ import annotations

from typing import Any

import torch

from prefkit.families.base import batch_timesteps, t5_length
from prefkit.families.flow import FlowFamily


class SD3Family(FlowFamily):
    """Stable Diffusion 3/3.5: SD3Transformer2DModel, two CLIPs and a T5."""

    name = "sd3"
    pipelines = ("StableDiffusion3Pipeline",)

    def stock_call_kwargs(self, guidance, batch_size):
        return {"guidance_scale": guidance, "max_sequence_length": t5_length(self.pipe, "tokenizer_3", 256)}

    @property
    def denoiser(self):
        return self.pipe.transformer

    def size_multiple(self):
        return self.vae_scale_factor * self.pipe.transformer.config.patch_size

    def max_size(self):
        cfg = self.pipe.transformer.config
        if not cfg.get("pos_embed_max_size"):
            return None
        return cfg.pos_embed_max_size * cfg.patch_size * self.vae_scale_factor

    def latent_shape(self, height, width):
        c = self.pipe.transformer.config.in_channels
        return (c, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def _encode_one(self, prompt):
        with torch.no_grad():
            pe, _, pooled, _ = self.pipe.encode_prompt(
                prompt=prompt,
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                do_classifier_free_guidance=False,
                max_sequence_length=t5_length(self.pipe, "tokenizer_3", 256),
            )
        return pe, pooled, None

    def _timestep_kwargs(self, num_steps, height, width):
        kw: dict[str, Any] = {"num_inference_steps": num_steps}
        cfg = self.pipe.scheduler.config
        if cfg.get("use_dynamic_shifting", False):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            p = self.pipe.transformer.config.patch_size
            seq = (height // self.vae_scale_factor // p) * (width // self.vae_scale_factor // p)
            kw["mu"] = calculate_shift(
                seq,
                cfg.get("base_image_seq_len", 256),
                cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5),
                cfg.get("max_shift", 1.16),
            )
        return kw

    def model_output(self, x, k, schedule, cond, guidance):
        net, dtype = self._net(), self.dtype
        t = schedule.timesteps[k].to(self.device)

        def call(xi, pe, pooled):
            ts = batch_timesteps(t, xi.shape[0])
            return net(
                hidden_states=xi.to(dtype),
                timestep=ts,
                encoder_hidden_states=pe,
                pooled_projections=pooled,
                return_dict=False,
            )[0]

        return self._guided(call, x, cond, guidance)
