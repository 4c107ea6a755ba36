"""Qwen-Image: QwenImageTransformer2DModel (MMDiT) on 2x2-packed latent tokens, a Qwen2.5-VL text encoder.

What QwenImagePipeline does, reproduced here (diffusers 0.42, pipelines/qwenimage/pipeline_qwenimage.py):

* prompts: the chat template ``prompt_template_encode`` around the prompt; the text encoder's last hidden
  state with the template's first ``prompt_template_encode_start_idx`` (34) tokens dropped; a batch is
  padded with zeros to its longest prompt and carries a 0/1 mask, which the pipeline drops (None) when
  every row is all tokens. prefkit encodes one prompt at a time (never padded inside the text encoder),
  then pads a batch the same way (:meth:`QwenImageFamily.encode`).
* latents: the VAE is a video VAE (AutoencoderKLQwenImage, latents [B, C, 1, h, w]); the single frame is
  dropped here, so latents are [B, C, h, w] as for the other families, packed 2x2 (as FLUX) only to call
  the transformer, whose rotary embedding takes ``img_shapes = [(1, h/2, w/2)]``.
* schedule: sigmas linspace(1, 1/K, K) shifted by mu = calculate_shift(packed tokens, ...) from the
  scheduler config (Qwen-Image: exponential time shift, shift_terminal 0.02).
* guidance: ``true_cfg_scale`` with a negative prompt, the conditional and unconditional passes as two
  calls of B, then the norm-preserving rescale: the combined velocity of every packed token is scaled
  back to the norm of the conditional one (over its 4C channels). The step whose log-prob prefkit
  records is the pipeline's step.
"""

from __future__ import annotations

import torch

from prefkit.errors import PrefkitError
from prefkit.families.base import batch_timesteps, encode_padded
from prefkit.families.flow import FlowFamily


class QwenImageFamily(FlowFamily):
    """Qwen-Image (Qwen/Qwen-Image): QwenImagePipeline, true CFG with the norm-preserving rescale."""

    name = "qwen-image"
    pipelines = ("QwenImagePipeline",)
    # attention module names of QwenDoubleStreamAttnProcessor2_0: to_q/k/v, to_out.0 (image stream) and
    # add_q/k/v_proj, to_add_out (text stream), as FlowFamily's defaults

    def stock_call_kwargs(self, guidance, batch_size):
        if guidance <= 1.0:
            return {"true_cfg_scale": guidance}
        return {"true_cfg_scale": guidance, "negative_prompt": [""] * batch_size}

    @property
    def denoiser(self):
        return self.pipe.transformer

    def size_multiple(self):
        return self.vae_scale_factor * 2

    def max_size(self):
        """The rotary table holds ``len(pos_freqs)`` (4096) positions: an image of n x n patch tokens uses
        indices up to n/2 on each side, and the text (up to 1024 tokens) follows at index n/2. So n/2 +
        1024 <= 4096; n <= 6144 patches: 98,304 px for Qwen-Image."""
        positions = int(self.pipe.transformer.pos_embed.pos_freqs.shape[0])
        return 2 * (positions - self.pipe.tokenizer_max_length) * 2 * self.vae_scale_factor

    def latent_shape(self, height, width):
        c = self.pipe.transformer.config.in_channels // 4
        f = self.vae_scale_factor * 2
        return (c, 2 * (height // f), 2 * (width // f))

    # -- prompts ------------------------------------------------------------------------------------
    def encode(self, prompts, negative_prompt):
        return encode_padded(self, prompts, negative_prompt)  # each prompt its own tokens; padded, masked

    def _encode_one(self, prompt):
        with torch.no_grad():
            pe, mask = self.pipe.encode_prompt(prompt=prompt, device=self.device)
        if mask is not None:  # one prompt alone is never padded: the pipeline returns no mask
            raise PrefkitError(f"QwenImagePipeline.encode_prompt padded a single prompt: {prompt!r}")
        return pe, None, None

    # -- schedule and denoiser ----------------------------------------------------------------------
    def _timestep_kwargs(self, num_steps, height, width):
        import numpy as np
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

        c, h, w = self.latent_shape(height, width)
        cfg = self.pipe.scheduler.config
        return {
            "sigmas": np.linspace(1.0, 1 / num_steps, num_steps),
            "mu": calculate_shift(
                (h // 2) * (w // 2),
                cfg.get("base_image_seq_len", 256),
                cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5),
                cfg.get("max_shift", 1.15),
            ),
        }

    @staticmethod
    def pack(x: torch.Tensor) -> torch.Tensor:
        return _pack(x)

    @staticmethod
    def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return _unpack(x, h, w)

    def model_output(self, x, k, schedule, cond, guidance):
        net, dtype = self._net(), self.dtype
        b, c, h, w = x.shape
        img_shapes = [[(1, h // 2, w // 2)]] * b
        t = (schedule.timesteps[k] / 1000).to(self.device)

        def call(xi, pe, mask):
            return net(
                hidden_states=_pack(xi).to(dtype),
                timestep=batch_timesteps(t, xi.shape[0]).to(dtype),
                encoder_hidden_states=pe,
                encoder_hidden_states_mask=None if mask is None else mask.to(self.device),
                img_shapes=img_shapes,
                return_dict=False,
            )[0].float()

        text = call(x, cond.prompt_embeds, cond.prompt_mask)
        if cond.guided:
            # QwenImagePipeline: two calls of B, then the norm-preserving rescale per packed token
            uncond = call(x, cond.negative_prompt_embeds, cond.negative_prompt_mask)
            comb = uncond + guidance * (text - uncond)
            cond_norm = torch.norm(text, dim=-1, keepdim=True)
            noise_norm = torch.norm(comb, dim=-1, keepdim=True)
            text = comb * (cond_norm / noise_norm)
        return _unpack(text, h, w)

    def _latent_stats(self, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latents_mean and 1 / latents_std, shaped [1, C, 1, 1, 1] as the pipeline."""
        cfg = self.pipe.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(device, dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(device, dtype)
        return mean, inv_std

    def encode_pixels(self, px):
        """Images as one-frame videos -> (mode - latents_mean) * (1 / latents_std), the frame dropped (as
        QwenImageImg2ImgPipeline normalises image latents; the posterior's mode, as for the other families)."""
        vae = self.pipe.vae
        with torch.no_grad():
            z = vae.encode(px.to(self.device, vae.dtype)[:, :, None]).latent_dist.mode()
        mean, inv_std = self._latent_stats(z.dtype, z.device)
        return ((z - mean) * inv_std)[:, :, 0].float()

    def decode(self, x0):
        """QwenImagePipeline's decode: latents / (1 / std) + mean per channel, one frame, frame dropped."""
        vae = self.pipe.vae
        z = x0.to(vae.dtype)[:, :, None]
        mean, inv_std = self._latent_stats(z.dtype, z.device)
        with torch.no_grad():
            image = vae.decode(z / inv_std + mean, return_dict=False)[0][:, :, 0]
        return self.pipe.image_processor.postprocess(image, output_type="pil")


def _pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C], as QwenImagePipeline._pack_latents."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_pack`."""
    b, _, c4 = x.shape
    x = x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)
