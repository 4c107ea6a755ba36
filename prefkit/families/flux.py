"""FLUX.1: FluxTransformer2DModel on 2x2-packed latent tokens."""

from __future__ import annotations

from typing import Any

import torch

from prefkit.families.base import batch_timesteps, t5_length
from prefkit.families.flow import FlowFamily


class FluxFamily(FlowFamily):
    """FLUX.1: FluxTransformer2DModel on 2x2-packed latent tokens.

    Guidance: a guidance-distilled model (``guidance_embeds=True``, FLUX.1-dev) takes the guidance
    scale as an input embedding and runs one forward pass; otherwise true CFG with the negative
    prompt is used, as ``FluxPipeline(true_cfg_scale=...)`` does.
    """

    name = "flux"
    pipelines = ("FluxPipeline",)

    def stock_call_kwargs(self, guidance, batch_size):
        return {
            "true_cfg_scale": guidance,
            "negative_prompt": [""] * batch_size,
            "max_sequence_length": t5_length(self.pipe, "tokenizer_2", 512),
        }

    @property
    def denoiser(self):
        return self.pipe.transformer

    def _guided(self, call, x_in, cond, guidance):
        """True CFG in FluxPipeline's layout: the conditional and the unconditional pass as two calls
        of B (not one of 2B as for SD3), so that prefkit's FLUX samples are the stock pipeline's to the
        last bit: a batch of 2B may round differently from two of B (batch-dependent CPU kernels)."""
        if not cond.guided:
            return super()._guided(call, x_in, cond, guidance)
        text = call(x_in, cond.prompt_embeds, cond.pooled).float()
        uncond = call(x_in, cond.negative_prompt_embeds, cond.negative_pooled).float()
        return uncond + guidance * (text - uncond)

    @property
    def embedded_guidance(self) -> bool:
        return bool(self.pipe.transformer.config.guidance_embeds)

    def size_multiple(self):
        return self.vae_scale_factor * 2

    def latent_shape(self, height, width):
        c = self.pipe.transformer.config.in_channels // 4
        return (c, 2 * (height // (self.vae_scale_factor * 2)), 2 * (width // (self.vae_scale_factor * 2)))

    def encode(self, prompts, negative_prompt):
        # guidance-distilled models never see a negative prompt
        return super().encode(prompts, None if self.embedded_guidance else negative_prompt)

    def _encode_one(self, prompt):
        with torch.no_grad():
            pe, pooled, text_ids = self.pipe.encode_prompt(
                prompt=prompt,
                prompt_2=None,
                device=self.device,
                max_sequence_length=t5_length(self.pipe, "tokenizer_2", 512),
            )
        return pe, pooled, text_ids

    def _timestep_kwargs(self, num_steps, height, width):
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c, h, w = self.latent_shape(height, width)
        cfg = self.pipe.scheduler.config
        kw: dict[str, Any] = {"num_inference_steps": num_steps}
        if not cfg.get("use_flow_sigmas", False):
            kw["sigmas"] = np.linspace(1.0, 1 / num_steps, num_steps)
        kw["mu"] = calculate_shift(
            (h // 2) * (w // 2),
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        return kw

    @staticmethod
    def pack(x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, (h/2)(w/2), 4C] (FLUX's 2x2 patch tokens)."""
        b, c, h, w = x.shape
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Inverse of :meth:`pack`."""
        b, _, c4 = x.shape
        x = x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c4 // 4, h, w)

    def model_output(self, x, k, schedule, cond, guidance):
        net, dtype = self._net(), self.dtype
        b, c, h, w = x.shape
        ids = torch.zeros(h // 2, w // 2, 3)
        ids[..., 1] += torch.arange(h // 2)[:, None]
        ids[..., 2] += torch.arange(w // 2)[None, :]
        img_ids = ids.reshape(-1, 3).to(self.device, dtype)
        t = (schedule.timesteps[k] / 1000).to(self.device)
        g = None
        if self.embedded_guidance:
            g = torch.full([1], guidance, device=self.device, dtype=torch.float32)

        def call(xi, pe, pooled):
            n = xi.shape[0]
            return net(
                hidden_states=self.pack(xi).to(dtype),
                timestep=batch_timesteps(t, n).to(dtype),
                guidance=None if g is None else g.expand(n),
                pooled_projections=pooled,
                encoder_hidden_states=pe,
                txt_ids=cond.text_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]

        return self.unpack(self._guided(call, x, cond, guidance), h, w)
