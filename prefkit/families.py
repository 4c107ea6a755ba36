"""Loading a diffusers pipeline and driving its parts one step at a time.

The same code serves a built-in tiny model on a laptop CPU and ``stabilityai/stable-diffusion-3.5-medium``
on a GPU: every model is loaded with ``DiffusionPipeline.from_pretrained(path_or_hub_id)`` and then used
through its public pieces (``encode_prompt``, the scheduler's timesteps and sigmas, the denoiser, the
VAE). A :class:`Family` adapter hides the three ways these pieces fit together:

========  ================================  =========================  ==============================
family    pipelines                         scheduler (sampling)       model output
========  ================================  =========================  ==============================
ddim      StableDiffusionPipeline (1.x/2.x)  DDIMScheduler (eta > 0)   epsilon or v (converted to eps)
sd3       StableDiffusion3Pipeline           FlowMatchEuler + SDE       velocity
flux      FluxPipeline                       FlowMatchEuler + SDE       velocity (packed 2x2 tokens)
========  ================================  =========================  ==============================

Latents are always handled UNPACKED, shape [B, C, h, w] in float32; FLUX packs them only to call its
transformer. The log-prob math itself lives in :mod:`prefkit.math.logprob`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefkit.errors import PrefkitError
from prefkit.math.logprob import StepDistribution, ddim_step, flow_sde_step, v_to_eps

FAMILIES = ("ddim", "sd3", "flux")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PIPELINE_FAMILY = {
    "StableDiffusionPipeline": "ddim",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}


def quiet_libraries() -> None:
    """Silence the libraries' own progress bars and warnings so prefkit can draw its own."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_model(model: str) -> str:
    """A built-in model name (``tiny-sd3``...) becomes its folder; anything else is returned as given."""
    from prefkit.models.tiny import resolve_builtin

    return resolve_builtin(model) or model


def loadable(model: str, recorded_path: str | None) -> str:
    """What to load for the model a dataset manifest names: the id itself, or -- for a dataset made from
    a relative folder path that does not resolve from here -- the absolute path the manifest recorded."""
    if recorded_path and Path(recorded_path).is_dir() and not Path(resolve_model(model)).exists():
        return recorded_path
    return model


def load_pipeline(
    model: str,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    without_text_encoders: bool = False,
    lora: str | None = None,
):
    """``DiffusionPipeline.from_pretrained(path_or_hub_id)``, with a clear error when it cannot load.

    ``without_text_encoders`` loads no text encoder or tokenizer (training on stored prompt embeddings).
    ``lora``: a folder saved by ``prefkit train`` (diffusers LoRA format), loaded with the pipeline's own
    ``load_lora_weights`` (adapters are kept separate, not fused: the denoiser calls include them)."""
    quiet_libraries()
    from diffusers import DiffusionPipeline

    path = resolve_model(model)
    local = Path(path)
    if local.exists() and not (local / "model_index.json").is_file():
        raise PrefkitError(
            f"--model {model!r}: the folder {local} has no model_index.json; "
            "point --model at a diffusers pipeline folder or a Hub id"
        )
    if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") != 1):
        raise PrefkitError(
            f"--model {model!r}: no such folder, and it is not a Hub id of the form OWNER/NAME; "
            "give a diffusers pipeline folder, a Hub id, or a built-in name (tiny-shapes, tiny-sd3, tiny-sd15, tiny-flux, sd15-random, sd3-medium-random)"
        )
    skip = {}
    if without_text_encoders:
        index = DiffusionPipeline.load_config(path, revision=revision)
        skip = {k: None for k in index if k.startswith(("text_encoder", "tokenizer"))}
    try:
        pipe = DiffusionPipeline.from_pretrained(path, revision=revision, dtype=dtype, **skip)
    except Exception as exc:  # noqa: BLE001 - any loading failure is reported the same way
        raise PrefkitError(f"--model {model!r}: could not load the pipeline: {exc}") from exc
    if lora is not None:
        load_lora(pipe, lora)
    device = torch.device(device)
    if device.type == "cpu":
        device = torch.device("cpu")  # accelerate's multi-process CPU state says "cpu:0": the same memory
        # the LoRA's tensors too (a memory-mapped file as well); on a GPU, .to(device) copies anyway, and a
        # host copy first would double the host's peak memory for nothing
        own_cpu_weights(pipe)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def own_cpu_weights(pipe) -> int:
    """Give every CPU weight of the pipeline's models its own allocation; returns how many were copied.

    ``from_pretrained`` leaves CPU weights as views into the memory-mapped safetensors file, at offsets
    that are only 8-byte aligned, while any copy (``.to("cpu:0")`` in a multi-process run, a dtype
    change, a GPU) lands in torch's allocator, which aligns to 64 bytes. MKL / oneDNN kernels take
    another path for unaligned operands on some CPUs (AVX-512 on AMD EPYC: a Linear's output changed in
    the last bit), so the same model computed differently depending on how it reached memory. With this
    copy every process, thread count and launch computes with the same layout; docs/results.md "What depends on the CPU".
    The cost, on the CPU only: the weights are resident from the start (a memory-mapped file is read
    lazily), and while copying, the read file pages and the copies are both resident (sd15-random in
    bfloat16: peak RSS 3,992 MiB during loading, 2,353 MiB after it; 419 MiB lazily mapped without it).
    """
    import torch.nn as nn

    copied = 0
    for component in pipe.components.values():
        if not isinstance(component, nn.Module):
            continue
        for module in component.modules():
            for table in (module._parameters, module._buffers):
                for t in table.values():
                    if t is None or t.device.type != "cpu":
                        continue
                    if t.untyped_storage().nbytes() == t.nbytes and t.data_ptr() % 64 == 0:
                        continue  # already its own aligned allocation
                    # in place (.data): a weight shared by two modules (tied embeddings) stays shared
                    t.data = t.detach().clone(memory_format=torch.contiguous_format)
                    copied += 1
    return copied


def load_lora(pipe, lora: str | Path) -> None:
    """Load a prefkit LoRA folder into ``pipe`` (checked: a clear error instead of a silent no-op)."""
    folder = Path(lora).expanduser()
    weights = folder / "pytorch_lora_weights.safetensors"
    if not weights.is_file():
        raise PrefkitError(
            f"--lora {str(lora)!r}: no pytorch_lora_weights.safetensors in that folder; give the lora/ folder "
            "that prefkit train wrote (OUT/lora, or a checkpoint: OUT/checkpoint-N)"
        )
    if not hasattr(pipe, "load_lora_weights"):
        raise PrefkitError(f"--lora: {type(pipe).__name__} cannot load LoRA weights")
    denoiser_name = "unet" if hasattr(pipe, "unet") else "transformer"
    before = _lora_tensors(getattr(pipe, denoiser_name, None))
    try:
        pipe.load_lora_weights(str(folder))
    except Exception as exc:  # noqa: BLE001 - a wrong-model LoRA fails in many ways
        raise PrefkitError(f"--lora {str(lora)!r}: could not load it into --model: {exc}") from exc
    # load_lora_weights skips what matches no module, silently (another family) or with a warning (some
    # names match): count what arrived in the denoiser against the file's own denoiser tensors
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
    expected = [k for k in keys if k.startswith(denoiser_name + ".") and (".lora_A." in k or ".lora_B." in k)]
    loaded = _lora_tensors(getattr(pipe, denoiser_name, None)) - before
    if loaded == 0 or loaded < len(expected):
        found = f"only {loaded} of its {len(expected)}" if loaded else "none of its"
        raise PrefkitError(
            f"--lora {str(lora)!r}: does not fit --model: {found} LoRA tensors match the modules of this "
            f"{type(pipe).__name__}'s {denoiser_name} (file keys such as {keys[0] if keys else '-'!r}); "
            "load it into the model it was trained on"
        )


def _lora_tensors(module) -> int:
    if module is None:
        return 0
    return sum(1 for n, _ in module.named_parameters() if ".lora_A." in n or ".lora_B." in n)


@dataclass
class Conditioning:
    """Text conditioning of a batch, already paired with the negative prompt when CFG is on.

    prompt_embeds: [B, L, H]; pooled: [B, P] (sd3, flux) or None; negative_*: the same shapes or None
    when guidance is off; text_ids: [L, 3] (flux only).
    """

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    text_ids: torch.Tensor | None = None

    @property
    def guided(self) -> bool:
        return self.negative_prompt_embeds is not None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}


@dataclass
class Schedule:
    """Everything step k needs, for K steps. k = 0 is the first step, from pure noise.

    timesteps: [K] the model's timestep input (int64 for ddim, float32 sigma * 1000 for flow).
    alphas: [K] and alphas_prev: [K] (ddim) -- alphas_cumprod at t and at t - T // K.
    sigmas: [K + 1] float32 (flow) -- sigma before step k is sigmas[k], after it sigmas[k + 1].
    """

    timesteps: torch.Tensor
    alphas: torch.Tensor | None = None
    alphas_prev: torch.Tensor | None = None
    sigmas: torch.Tensor | None = None

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


class Family:
    """How one pipeline family encodes prompts, schedules, predicts, steps and decodes."""

    name: str = ""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.device = pipe._execution_device if hasattr(pipe, "_execution_device") else pipe.device
        self.vae_scale_factor = pipe.vae_scale_factor
        # what model_output calls: the denoiser itself, or a wrapper of it (DDP from accelerator.prepare,
        # so that gradients are synchronised); its config and dtype are read from ``denoiser``
        self.net: torch.nn.Module | None = None

    # -- description -------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def _net(self):
        return self.net if self.net is not None else self.denoiser

    def set_network(self, net: torch.nn.Module | None) -> None:
        """Run the forwards of :meth:`model_output` through ``net`` (a wrapper of the denoiser, such as the
        DDP module from ``accelerator.prepare``, or another copy of it); None: the denoiser itself."""
        self.net = net

    @contextlib.contextmanager
    def using(self, net: torch.nn.Module | None) -> Iterator[None]:
        """Inside the block, forwards run through ``net`` (see :meth:`set_network`); the network in use
        before is restored when the block ends, however it ends."""
        before = self.net
        self.set_network(net)
        try:
            yield
        finally:
            self.set_network(before)

    def default_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def size_multiple(self) -> int:
        """Height and width must be multiples of this many pixels."""
        raise NotImplementedError

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        raise NotImplementedError

    def check_size(self, height: int, width: int) -> None:
        m = self.size_multiple()
        for name, value in (("--height", height), ("--width", width)):
            if value <= 0 or value % m:
                raise PrefkitError(
                    f"{name} {value}: this {self.name} model takes sizes that are positive multiples of "
                    f"{m} px (VAE downscale x{self.vae_scale_factor}); try {max(m, round(value / m) * m)}"
                )

    def scheduler_info(self) -> dict[str, Any]:
        return {"scheduler": type(self.pipe.scheduler).__name__}

    # -- the pieces ---------------------------------------------------------------------------------
    def encode(self, prompts: list[str], negative_prompt: str | None) -> Conditioning:
        """Encode prompts one at a time (batch-size independent), and the negative once if given."""
        rows = [self._encode_cached(p) for p in prompts]
        cond = Conditioning(
            prompt_embeds=torch.cat([r[0] for r in rows]),
            pooled=torch.cat([r[1] for r in rows]) if rows[0][1] is not None else None,
            text_ids=rows[0][2],
        )
        if negative_prompt is not None:
            neg = self._encode_cached(negative_prompt)
            n = len(prompts)
            cond.negative_prompt_embeds = neg[0].expand(n, *neg[0].shape[1:])
            cond.negative_pooled = neg[1].expand(n, *neg[1].shape[1:]) if neg[1] is not None else None
        return cond

    def _encode_cached(self, prompt: str):
        """Prompts repeat across the batches of a group (and the negative prompt in every batch):
        encode each once. Safe because encoding is done one prompt at a time (batch-independent)."""
        cache = self.__dict__.setdefault("_encoded", {})
        if prompt not in cache:
            if len(cache) >= 256:
                cache.pop(next(iter(cache)))
            cache[prompt] = self._encode_one(prompt)
        return cache[prompt]

    def forget_prompt_encodings(self) -> None:
        """Drop the cached prompt encodings, so the next :meth:`encode` runs the text encoders again: after
        their weights change (a text-encoder LoRA switched on or off), or to time encoding afresh."""
        self.__dict__.pop("_encoded", None)

    def _encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError

    def schedule(self, num_steps: int, height: int, width: int) -> Schedule:
        raise NotImplementedError

    def model_output(self, x: torch.Tensor, k, schedule: Schedule, cond: Conditioning, guidance: float):
        """The denoiser's prediction for latents x [B, C, h, w] at step k, after CFG, in float32.

        k is an int (every sample at the same step, as in sampling) or a LongTensor [B] (one step per
        sample, as in training)."""
        raise NotImplementedError

    def step_distribution(
        self, x: torch.Tensor, out: torch.Tensor, k: int, schedule: Schedule, noise: float
    ) -> StepDistribution:
        """The Gaussian of x_{k+1} given x_k and the model output (``noise`` = eta or noise level)."""
        raise NotImplementedError

    def decode(self, x0: torch.Tensor):
        """Final latents [B, C, h, w] -> list of PIL images."""
        vae = self.pipe.vae
        z = x0.to(vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            z = z + shift
        with torch.no_grad():
            image = vae.decode(z, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pil")

    def _guided(self, call, x_in: torch.Tensor, cond: Conditioning, guidance: float) -> torch.Tensor:
        """Run ``call(x, prompt_embeds, pooled)`` with CFG: eps = eps_u + w (eps_c - eps_u) (docs/math.md section 4)."""
        if not cond.guided:
            return call(x_in, cond.prompt_embeds, cond.pooled).float()
        pooled = None if cond.pooled is None else torch.cat([cond.negative_pooled, cond.pooled])
        both = call(
            torch.cat([x_in, x_in]), torch.cat([cond.negative_prompt_embeds, cond.prompt_embeds]), pooled
        ).float()
        uncond, text = both.chunk(2)
        return uncond + guidance * (text - uncond)


def batch_timesteps(t: torch.Tensor, n: int) -> torch.Tensor:
    """Timesteps for a forward batch of n: a scalar is broadcast; a [B] tensor (one step per sample,
    as in training) is repeated for the CFG halves (n = 2B)."""
    if t.ndim == 0:
        return t.expand(n)
    return t.repeat(n // t.shape[0])


def t5_length(pipe, tokenizer_name: str, default: int) -> int:
    """T5 padding length: the pipeline's default (SD3 256, FLUX 512), capped by the tokenizer's own
    ``model_max_length``. Real checkpoints' T5 tokenizers allow 512, so nothing changes for them; the
    built-in tiny models declare 32, which keeps their attention small on a laptop CPU. Pass the same
    ``max_sequence_length`` to a stock ``pipe(...)`` to reproduce prefkit's samples of a tiny model."""
    tok = getattr(pipe, tokenizer_name, None)
    limit = getattr(tok, "model_max_length", None) if tok is not None else None
    return min(default, int(limit)) if limit else default


class DDIMFamily(Family):
    """Stable Diffusion 1.x/2.x: UNet, epsilon or v prediction, sampled with DDIM (eta > 0)."""

    name = "ddim"

    def __init__(self, pipe):
        from diffusers import DDIMScheduler

        if not isinstance(pipe.scheduler, DDIMScheduler):
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        super().__init__(pipe)
        cfg = pipe.scheduler.config
        if cfg.prediction_type not in ("epsilon", "v_prediction"):
            raise PrefkitError(
                f"scheduler prediction_type {cfg.prediction_type!r} is not supported (epsilon or v_prediction)"
            )
        if cfg.thresholding:
            raise PrefkitError("DDIM with dynamic thresholding has no Gaussian step; disable thresholding")

    @property
    def denoiser(self):
        return self.pipe.unet

    def default_size(self):
        s = self.pipe.unet.config.sample_size * self.vae_scale_factor
        return s, s

    def size_multiple(self):
        downs = 2 ** (len(self.pipe.unet.config.down_block_types) - 1)
        return self.vae_scale_factor * downs

    def latent_shape(self, height, width):
        return (
            self.pipe.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )

    def scheduler_info(self):
        cfg = self.pipe.scheduler.config
        return {
            "scheduler": type(self.pipe.scheduler).__name__,
            "prediction_type": cfg.prediction_type,
            "timestep_spacing": cfg.timestep_spacing,
        }

    def _encode_one(self, prompt):
        with torch.no_grad():
            pe, _ = self.pipe.encode_prompt(prompt, self.device, 1, False)
        return pe, None, None

    def schedule(self, num_steps, height, width):
        sch = self.pipe.scheduler
        sch.set_timesteps(num_steps, device="cpu")
        timesteps = sch.timesteps.clone().long()
        ac = sch.alphas_cumprod.float()
        prev = timesteps - sch.config.num_train_timesteps // num_steps
        alphas_prev = torch.where(
            prev >= 0, ac[prev.clamp(min=0)], torch.as_tensor(sch.final_alpha_cumprod, dtype=torch.float32)
        )
        return Schedule(timesteps=timesteps, alphas=ac[timesteps], alphas_prev=alphas_prev)

    def model_output(self, x, k, schedule, cond, guidance):
        net, dtype = self._net(), self.dtype
        t = schedule.timesteps[k].to(self.device)

        def call(xi, pe, _pooled):
            return net(
                xi.to(dtype), batch_timesteps(t, xi.shape[0]), encoder_hidden_states=pe, return_dict=False
            )[0]

        out = self._guided(call, x, cond, guidance)
        if self.pipe.scheduler.config.prediction_type == "v_prediction":
            out = v_to_eps(out, x, schedule.alphas[k])
        return out

    def step_distribution(self, x, out, k, schedule, noise):
        cfg = self.pipe.scheduler.config
        clip = cfg.clip_sample_range if cfg.clip_sample else None
        return ddim_step(
            x, out, schedule.alphas[k], schedule.alphas_prev[k], eta=noise, clip_sample_range=clip
        )


class FlowFamily(Family):
    """Flow matching (SD3/3.5, FLUX): velocity models, Euler steps turned into an SDE."""

    def schedule(self, num_steps, height, width):
        sch = self.pipe.scheduler
        sch.set_timesteps(**self._timestep_kwargs(num_steps, height, width), device="cpu")
        return Schedule(timesteps=sch.timesteps.clone().float(), sigmas=sch.sigmas.clone().float())

    def _timestep_kwargs(self, num_steps, height, width) -> dict[str, Any]:
        raise NotImplementedError

    def step_distribution(self, x, out, k, schedule, noise):
        s = schedule.sigmas
        return flow_sde_step(x, out, s[k], s[k + 1], noise_level=noise, sigma_max=float(s[1]))


class SD3Family(FlowFamily):
    """Stable Diffusion 3/3.5: SD3Transformer2DModel, two CLIPs and a T5."""

    name = "sd3"

    @property
    def denoiser(self):
        return self.pipe.transformer

    def default_size(self):
        s = self.pipe.default_sample_size * self.vae_scale_factor
        return s, s

    def size_multiple(self):
        return self.vae_scale_factor * self.pipe.transformer.config.patch_size

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


class FluxFamily(FlowFamily):
    """FLUX.1: FluxTransformer2DModel on 2x2-packed latent tokens.

    Guidance: a guidance-distilled model (``guidance_embeds=True``, FLUX.1-dev) takes the guidance
    scale as an input embedding and runs one forward pass; otherwise true CFG with the negative
    prompt is used, as ``FluxPipeline(true_cfg_scale=...)`` does.
    """

    name = "flux"

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

    def default_size(self):
        s = self.pipe.default_sample_size * self.vae_scale_factor
        return s, s

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


def family_of(pipe) -> Family:
    """The :class:`Family` adapter of a loaded pipeline, or a clear error for unsupported ones."""
    name = _PIPELINE_FAMILY.get(type(pipe).__name__)
    if name is None:
        raise PrefkitError(
            f"pipeline class {type(pipe).__name__} is not supported yet; prefkit drives "
            + ", ".join(sorted(_PIPELINE_FAMILY))
        )
    return {"ddim": DDIMFamily, "sd3": SD3Family, "flux": FluxFamily}[name](pipe)
