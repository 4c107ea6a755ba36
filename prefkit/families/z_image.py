"""Z-Image: ZImageTransformer2DModel (single-stream S3-DiT) with a Qwen3 text encoder, the FLUX VAE.

What ZImagePipeline does, reproduced here (diffusers 0.42, pipelines/z_image/pipeline_z_image.py):

* prompts: Qwen3's chat template around the prompt (one user turn, the generation prompt, thinking on),
  padded to ``max_sequence_length`` (512) for the text encoder, whose second-to-last hidden state is
  kept for the real tokens only: each prompt is a [L_i, H] tensor of its own length, and the transformer
  takes a list of them. prefkit encodes one prompt at a time and keeps a batch as the prompts padded to
  the longest with a 0/1 mask (:class:`~prefkit.families.Conditioning`), turned back into the list of
  each prompt's own tokens to call the transformer (:func:`_captions`).
* latents: [B, C, h, w] (16 channels, VAE downscale 8); the transformer takes a list of [C, 1, h, w]
  (one frame) and patchifies 2 x 2 itself; decode is ``latents / scaling + shift`` (base Family).
* schedule: sigmas ``torch.linspace(1, 1/K, K)`` (the pipeline's get_default_z_image_sigmas) and mu from
  calculate_shift (used only by a scheduler with dynamic shifting: Z-Image's has a static shift of 3).
* timestep and output: the transformer is called with ``(1000 - t) / 1000`` (= 1 - sigma) and predicts
  the negated velocity; the pipeline negates it, and so does prefkit, so the output is a velocity as
  for SD3 and FLUX and the flow SDE (FlowFamily) applies unchanged.
* guidance: ``guidance_scale`` g' with ``pred = pos + g' (pos - neg)``, CFG on when g' > 0, the
  conditional and unconditional halves as ONE transformer call of 2B, conditional first. prefkit's
  ``--guidance`` w keeps its meaning for every family (``uncond + w (cond - uncond)``, off at w <= 1), so
  w = g' + 1: ``--guidance 5`` is ``guidance_scale=4`` (Z-Image's recommended setting), and
  ``--guidance 1`` is Z-Image-Turbo's ``guidance_scale=0`` (no CFG). The pipeline's ``cfg_truncation``
  and ``cfg_normalization`` are left at their defaults (1.0 and False: no effect).
"""

from __future__ import annotations

import torch

from prefkit.errors import PrefkitError
from prefkit.families.base import batch_timesteps, encode_padded
from prefkit.families.flow import FlowFamily

#: ZImagePipeline's default ``max_sequence_length`` (text encoder padding; only real tokens are kept).
MAX_SEQUENCE_LENGTH = 512


class ZImageFamily(FlowFamily):
    """Z-Image (Tongyi-MAI/Z-Image, Z-Image-Turbo): ZImagePipeline, CFG in one call of 2B."""

    name = "z-image"
    pipelines = ("ZImagePipeline",)
    # ZSingleStreamAttnProcessor's modules are to_q/k/v and to_out.0 only (one stream: no add_*_proj);
    # --lora-targets to_q,to_k,to_v,to_out.0,w1,w2,w3 adds the feed-forward
    lora_context_targets = ()

    def stock_call_kwargs(self, guidance, batch_size):
        return {"guidance_scale": self.pipeline_guidance(guidance)}

    @staticmethod
    def pipeline_guidance(guidance: float) -> float:
        """prefkit's w -> ZImagePipeline's guidance_scale (w - 1; 0 = no CFG)."""
        return guidance - 1.0 if guidance > 1.0 else 0.0

    @property
    def denoiser(self):
        return self.pipe.transformer

    def default_size(self):
        """ZImagePipeline's default is 1024 px, which is 128 latent pixels a side with Z-Image's VAE (x8);
        with another VAE (the tiny model's x2: 256 px) prefkit keeps the 128 latent pixels."""
        s = 128 * self.vae_scale_factor
        return s, s

    def size_multiple(self):
        return self.vae_scale_factor * 2  # the pipeline's rule: 2 x 2 patches of latent pixels

    def max_size(self):
        """The rotary tables hold ``axes_lens`` positions per axis: an image of H x W patches uses
        heights 0..H-1 and widths 0..W-1 (Z-Image: 512 each, 8192 px)."""
        lens = self.pipe.transformer.config.axes_lens
        patch = self.pipe.transformer.config.all_patch_size[0]
        return int(min(lens[1], lens[2])) * patch * self.vae_scale_factor

    def latent_shape(self, height, width):
        c = self.pipe.transformer.config.in_channels
        f = self.vae_scale_factor * 2
        return (c, 2 * (height // f), 2 * (width // f))

    # -- prompts ------------------------------------------------------------------------------------
    def encode(self, prompts, negative_prompt):
        return encode_padded(self, prompts, negative_prompt)  # each prompt its own tokens; padded, masked

    def _encode_one(self, prompt):
        with torch.no_grad():
            rows, _ = self.pipe.encode_prompt(
                prompt=prompt,
                device=self.device,
                do_classifier_free_guidance=False,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
            )
        if len(rows) != 1:
            raise PrefkitError(f"ZImagePipeline.encode_prompt returned {len(rows)} embeddings for one prompt")
        return rows[0][None], None, None

    # -- schedule and denoiser ----------------------------------------------------------------------
    def _timestep_kwargs(self, num_steps, height, width):
        from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas

        c, h, w = self.latent_shape(height, width)
        cfg = self.pipe.scheduler.config
        return {
            "sigmas": get_default_z_image_sigmas(num_steps),
            "mu": calculate_shift(
                (h // 2) * (w // 2),
                cfg.get("base_image_seq_len", 256),
                cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5),
                cfg.get("max_shift", 1.15),
            ),
        }

    def model_output(self, x, k, schedule, cond, guidance):
        net, dtype = self._net(), self.dtype
        b = x.shape[0]
        t = schedule.timesteps[k].to(self.device)
        t_model = (1000 - batch_timesteps(t, b)) / 1000  # the pipeline's timestep input: 1 - sigma
        captions = _captions(cond.prompt_embeds, cond.prompt_mask)
        latents = x.to(dtype)
        if cond.guided:
            # ZImagePipeline: one call of 2B, the conditional half first
            latents = latents.repeat(2, 1, 1, 1)
            t_model = t_model.repeat(2)
            captions = captions + _captions(cond.negative_prompt_embeds, cond.negative_prompt_mask)
        out = net(list(latents.unsqueeze(2).unbind(dim=0)), t_model, captions, return_dict=False)[0]
        out = torch.stack([o.float() for o in out], dim=0)
        if cond.guided:
            pos, neg = out[:b], out[b:]
            out = pos + self.pipeline_guidance(guidance) * (pos - neg)
        return -out.squeeze(2)  # the transformer predicts the negated velocity


def _captions(pe: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    """[B, L, H] padded embeddings and their [B, L] mask -> the list of each prompt's own [L_i, H]."""
    if mask is None:
        return list(pe.unbind(dim=0))
    lengths = mask.sum(dim=1).tolist()
    return [pe[i, : int(n)] for i, n in enumerate(lengths)]
