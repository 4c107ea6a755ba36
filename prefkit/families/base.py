"""Loading a diffusers pipeline and driving its parts one step at a time.

The same code serves a built-in tiny model on a laptop CPU and ``stabilityai/stable-diffusion-3.5-medium``
on a GPU: every model is loaded with ``DiffusionPipeline.from_pretrained(path_or_hub_id)`` and then used
through its public pieces (``encode_prompt``, the scheduler's timesteps and sigmas, the denoiser, the
VAE). A :class:`Family` adapter hides the ways these pieces fit together, one module of this package per
family (found by ``family_of``, nothing to register):

==========  ================================  =========================  ==============================
family      pipelines                         scheduler (sampling)       model output
==========  ================================  =========================  ==============================
ddim        StableDiffusionPipeline (1.x/2.x)  DDIMScheduler (eta > 0)   epsilon or v (converted to eps)
sdxl        StableDiffusionXLPipeline          DDIMScheduler (eta > 0)   epsilon or v (converted to eps)
sd3         StableDiffusion3Pipeline           FlowMatchEuler + SDE       velocity
flux        FluxPipeline                       FlowMatchEuler + SDE       velocity (packed 2x2 tokens)
qwen-image  QwenImagePipeline                  FlowMatchEuler + SDE       velocity (packed 2x2 tokens)
z-image     ZImagePipeline                     FlowMatchEuler + SDE       velocity (negated back)
==========  ================================  =========================  ==============================

Latents are always handled UNPACKED, shape [B, C, h, w] in float32; FLUX and Qwen-Image pack them only
to call their transformers (Z-Image's takes a list of [C, 1, h, w] and patchifies them itself). The log-prob math itself lives in :mod:`prefkit.math.logprob`.
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
from prefkit.math.logprob import StepDistribution

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
        from prefkit.models.tiny import BUILTIN_MODELS, TRAINED_MODELS

        raise PrefkitError(
            f"--model {model!r}: no such folder, and it is not a Hub id of the form OWNER/NAME; "
            "give a diffusers pipeline folder, a Hub id, or a built-in name "
            f"({', '.join([*TRAINED_MODELS, *BUILTIN_MODELS])})"
        )
    skip = {}
    if without_text_encoders:
        index = DiffusionPipeline.load_config(path, revision=revision)
        skip = {k: None for k in index if k.startswith(("text_encoder", "tokenizer"))}
    # on the CPU the weights are copied into aligned memory below (own_cpu_weights); reading the diffusers
    # models' files instead of mapping them leaves no file mapping behind (a mapped file stays resident as
    # long as one tensor points into it: 4 GiB of sd3-medium-random's transformer did, after the copy)
    on_cpu = torch.device(device).type == "cpu"
    try:
        pipe = DiffusionPipeline.from_pretrained(
            path, revision=revision, dtype=dtype, disable_mmap=on_cpu, **skip
        )
    except Exception as exc:  # noqa: BLE001 - any loading failure is reported the same way
        raise PrefkitError(f"--model {model!r}: could not load the pipeline: {exc}") from exc
    if lora is not None:
        load_lora(pipe, lora)
    device = torch.device(device)
    if on_cpu:
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
    lazily), and while copying, the read file and the copies are both resident (sd3-medium-random in
    bfloat16, its diffusers models read rather than mapped, see load_pipeline: peak RSS 8,745 MiB during
    loading, 6,780 MiB after it).
    """
    import torch.nn as nn

    copied, seen = 0, set()
    for component in pipe.components.values():
        if not isinstance(component, nn.Module):
            continue
        for module in component.modules():
            for table in (module._parameters, module._buffers):
                for t in table.values():
                    if t is None or t.device.type != "cpu" or id(t) in seen:
                        continue
                    # every tensor, even one that fills its own storage at an aligned address: that storage
                    # may still be the mapped file (safetensors gives some tensors a storage of their own
                    # over the mapping), and one such tensor keeps the whole file mapped and resident
                    # (sd3-medium-random: 198 of 1,654 tensors, 3.5 GiB of file pages after loading)
                    seen.add(id(t))
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

    prompt_embeds: [B, L, H]; pooled: [B, P] (sdxl, sd3, flux) or None; negative_*: the same shapes or None
    when guidance is off; text_ids: [L, 3] (flux only). prompt_mask / negative_prompt_mask: [B, L] (1 =
    a token, 0 = padding) where prompts of one batch have different lengths (qwen_image pads each
    batch to its longest prompt, as QwenImagePipeline does); None when every row is all tokens.
    """

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    text_ids: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None
    negative_prompt_mask: torch.Tensor | None = None

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
    """How one pipeline family encodes prompts, schedules, predicts, steps and decodes.

    A subclass in a module of this package is found by ``family_of`` through its ``pipelines``; what the
    rest of prefkit needs to know of a family is one of these attributes, never its name."""

    name: str = ""  # recorded in a dataset's manifest (model.family)
    pipelines: tuple[str, ...] = ()  # the diffusers pipeline classes it drives
    sampler_kind: str = ""  # "ddim" (noise = --eta) or "flow_sde" (noise = --noise-level)
    prediction: str = ""  # what the denoiser predicts once converted: "epsilon" or "flow" (velocity)
    denoiser_name: str = ""  # the pipeline component trained: "unet" or "transformer" (LoRA file keys)
    lora_context_targets: tuple[str, ...] = ()  # LoRA targets besides to_q/k/v/out (joint attention)

    @property
    def noise_flag(self) -> str:
        """The sampler's noise setting: eta (DDIM) or noise_level (flow SDE)."""
        return "eta" if self.sampler_kind == "ddim" else "noise_level"

    @property
    def default_noise(self) -> float:
        """prefkit generate's default: eta 1.0 (DDIM), noise level 0.7 (flow SDE)."""
        return 1.0 if self.sampler_kind == "ddim" else 0.7

    def stock_call_kwargs(self, guidance: float, batch_size: int) -> dict[str, Any]:
        """Keyword arguments that make a stock ``pipe(...)`` call sample as prefkit does (guidance, text
        length); for benchmarks and the stock-equivalence tests."""
        return {"guidance_scale": guidance}

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
        """The pipeline's own default size: its default_sample_size latents times the VAE's downscale."""
        s = self.pipe.default_sample_size * self.vae_scale_factor
        return s, s

    def size_multiple(self) -> int:
        """Height and width must be multiples of this many pixels."""
        raise NotImplementedError

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        raise NotImplementedError

    def max_size(self) -> int | None:
        """The largest height or width the denoiser takes, in pixels (None: no fixed limit)."""
        return None

    def check_size(self, height: int, width: int) -> None:
        m, limit = self.size_multiple(), self.max_size()
        for name, value in (("--height", height), ("--width", width)):
            if value <= 0 or value % m:
                raise PrefkitError(
                    f"{name} {value}: this {self.name} model takes sizes that are positive multiples of "
                    f"{m} px (VAE downscale x{self.vae_scale_factor}); try {max(m, round(value / m) * m)}"
                )
            if limit is not None and value > limit:
                raise PrefkitError(
                    f"{name} {value}: this {self.name} model takes at most {limit} px (its position "
                    f"embedding covers {limit // self.vae_scale_factor} latent pixels); try {limit} or less"
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

    def encode_pixels(self, px: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [N, 3, H, W] in [-1, 1] -> latents [N, C, h, w] in float32, the inverse of
        :meth:`decode` (the VAE posterior's mode, shifted and scaled as the denoiser sees latents)."""
        vae = self.pipe.vae
        with torch.no_grad():
            z = vae.encode(px.to(self.device, vae.dtype)).latent_dist.mode().float()
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            z = z - shift
        return z * vae.config.scaling_factor

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


def pad_prompt_embeds(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[1 or none, L_i, H] rows -> ([B, max L, H] zero-padded, [B, max L] 0/1 mask or None when all
    rows have the same length), as QwenImagePipeline._get_qwen_prompt_embeds and encode_prompt do."""
    rows = [r[0] if r.ndim == 3 else r for r in rows]
    longest = max(r.shape[0] for r in rows)
    pe = torch.stack([torch.cat([r, r.new_zeros(longest - r.shape[0], r.shape[1])]) for r in rows])
    if all(r.shape[0] == longest for r in rows):
        return pe, None
    mask = torch.stack(
        [
            torch.cat(
                [
                    torch.ones(r.shape[0], dtype=torch.long),
                    torch.zeros(longest - r.shape[0], dtype=torch.long),
                ]
            )
            for r in rows
        ]
    ).to(pe.device)
    return pe, mask


def encode_padded(family, prompts, negative_prompt) -> Conditioning:
    """Conditioning of a family whose text encoder gives each prompt its own number of tokens (Qwen-Image,
    Z-Image): one prompt at a time (``family._encode_cached``), the batch padded to its longest prompt with
    a mask (None when all prompts have the same length: the pipelines pass no mask then either)."""
    rows = [family._encode_cached(p)[0] for p in prompts]
    pe, mask = pad_prompt_embeds(rows)
    cond = Conditioning(prompt_embeds=pe, prompt_mask=mask)
    if negative_prompt is not None:
        neg = family._encode_cached(negative_prompt)[0]
        cond.negative_prompt_embeds = neg.expand(len(prompts), *neg.shape[1:])
    return cond
