"""Stable Diffusion XL: the SD UNet sampled with DDIM (eta > 0), conditioned on two CLIP encoders and on
SDXL's size "time ids".

What SDXL adds to the SD 1.x/2.x family (:class:`~prefkit.families.sd.DDIMFamily`), as
``StableDiffusionXLPipeline`` does it:

* the prompt embedding is the penultimate hidden states of CLIP-L and of OpenCLIP-bigG, concatenated
  ([B, 77, 768 + 1280 = 2048] for the published model), and the pooled embedding is bigG's projected text
  embedding ([B, 1280]); both come from the pipeline's own ``encode_prompt``;
* the UNet also takes ``added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}`` with
  ids = (original height, original width, crop top, crop left, target height, target width). Prefkit
  uses what the pipeline uses by default: original size = target size = the image size, crop (0, 0),
  the same for the negative branch. The ids follow from the latents' shape (size = latent size x the
  VAE's downscale), so they are never stored: the same for every sample of a dataset, and for
  Diffusion-DPO's training images they are (resolution, resolution, 0, 0, resolution, resolution), as
  in the Diffusion-DPO authors' SDXL training (SalesforceAIResearch/DiffusionDPO, train.py);
* ``force_zeros_for_empty_prompt`` (True in the published model): an EMPTY negative prompt -- prefkit's
  default -- is all-zero embeddings and pooled, as ``pipe(prompt)`` without ``negative_prompt`` does;
  any other negative prompt is encoded;
* the VAE overflows in float16: with ``force_upcast`` the decode runs in float32, as the pipeline does.

The scheduler (published: EulerDiscreteScheduler) is replaced by DDIM with the same betas, as for SD 1.x.
"""

from __future__ import annotations

import torch

from prefkit.errors import PrefkitError
from prefkit.families.base import Conditioning, batch_timesteps
from prefkit.families.sd import DDIMFamily
from prefkit.math.logprob import v_to_eps

#: (original size, crop top-left, target size): the number of time ids SDXL's UNet embeds.
TIME_IDS = 6


class SDXLFamily(DDIMFamily):
    """Stable Diffusion XL: UNet with two text encoders and size conditioning, DDIM (eta > 0)."""

    name = "sdxl"
    pipelines = ("StableDiffusionXLPipeline",)

    def __init__(self, pipe):
        super().__init__(pipe)
        cfg = pipe.unet.config
        if cfg.get("addition_embed_type") != "text_time":
            raise PrefkitError(
                f"{type(pipe).__name__}: the UNet's addition_embed_type is {cfg.get('addition_embed_type')!r}, "
                "not SDXL's 'text_time' (pooled text + size time ids)"
            )
        if cfg.get("time_cond_proj_dim") is not None:
            raise PrefkitError(
                "this SDXL UNet embeds the guidance scale (time_cond_proj_dim: an LCM-distilled model); "
                "prefkit samples SDXL with DDIM and classifier-free guidance only"
            )
        te2 = getattr(pipe, "text_encoder_2", None)
        if te2 is not None:  # loaded without text encoders (stored embeddings): the UNet call checks it
            passed = cfg.addition_time_embed_dim * TIME_IDS + te2.config.projection_dim
            expected = pipe.unet.add_embedding.linear_1.in_features
            if passed != expected:
                raise PrefkitError(
                    f"SDXL UNet expects an added embedding of {expected} values, but {TIME_IDS} time ids x "
                    f"{cfg.addition_time_embed_dim} + the pooled text ({te2.config.projection_dim}) give {passed}"
                )

    @property
    def zeros_for_empty_negative(self) -> bool:
        """The pipeline's ``force_zeros_for_empty_prompt``: an empty negative prompt is zero embeddings."""
        return bool(self.pipe.config.get("force_zeros_for_empty_prompt", False))

    def encode(self, prompts: list[str], negative_prompt: str | None) -> Conditioning:
        if negative_prompt == "" and self.zeros_for_empty_negative:
            cond = super().encode(prompts, None)
            cond.negative_prompt_embeds = torch.zeros_like(cond.prompt_embeds)
            cond.negative_pooled = torch.zeros_like(cond.pooled)
            return cond
        return super().encode(prompts, negative_prompt)

    def _encode_one(self, prompt):
        with torch.no_grad():
            pe, _, pooled, _ = self.pipe.encode_prompt(
                prompt=prompt,
                prompt_2=None,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )
        return pe, pooled, None

    def time_ids(self, height: int, width: int, n: int, dtype: torch.dtype) -> torch.Tensor:
        """[n, 6]: original size (height, width), crop top-left (0, 0), target size (height, width), in
        ``dtype`` (the pipeline's: the prompt embeddings' dtype)."""
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)
        return ids.to(self.device).repeat(n, 1)

    def model_output(self, x, k, schedule, cond, guidance):
        net, dtype = self._net(), self.dtype
        t = schedule.timesteps[k].to(self.device)
        height, width = (s * self.vae_scale_factor for s in x.shape[-2:])

        def call(xi, pe, pooled):
            n = xi.shape[0]
            added = {"text_embeds": pooled, "time_ids": self.time_ids(height, width, n, pe.dtype)}
            return net(
                xi.to(dtype),
                batch_timesteps(t, n),
                encoder_hidden_states=pe,
                added_cond_kwargs=added,
                return_dict=False,
            )[0]

        out = self._guided(call, x, cond, guidance)
        if self.pipe.scheduler.config.prediction_type == "v_prediction":
            out = v_to_eps(out, x, schedule.alphas[k])
        return out

    def decode(self, x0):
        """As ``StableDiffusionXLPipeline``: a float16 VAE with ``force_upcast`` decodes in float32, and
        latents are de-normalised with the VAE's ``latents_mean`` / ``latents_std`` when it has them."""
        vae = self.pipe.vae
        cfg = vae.config
        upcast = vae.dtype == torch.float16 and cfg.get("force_upcast", False)
        z = x0.float()
        mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
        if mean is not None and std is not None:
            c = z.shape[1]
            mean_t = torch.tensor(mean, dtype=z.dtype).view(1, c, 1, 1).to(z.device)
            std_t = torch.tensor(std, dtype=z.dtype).view(1, c, 1, 1).to(z.device)
            z = z * std_t / cfg.scaling_factor + mean_t
        else:
            z = z / cfg.scaling_factor
        if upcast:
            vae.to(torch.float32)
        try:
            with torch.no_grad():
                image = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
        return self.pipe.image_processor.postprocess(image, output_type="pil")
