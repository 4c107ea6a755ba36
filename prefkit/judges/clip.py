"""CLIP-based reward models: PickScore and the LAION aesthetic predictor.

PickScore (Kirstain et al. 2023, github.com/yuvalkirstain/PickScore README "Inference with PickScore"): a
CLIP-H fine-tuned on Pick-a-Pic. Model ``yuvalkirstain/PickScore_v1``, processor
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; text padded/truncated to 77 tokens; both feature vectors are
L2-normalised and ``score = logit_scale.exp() * (text . image)`` (before the README's softmax over images).

LAION aesthetic predictor v2 (github.com/christophschuhmann/improved-aesthetic-predictor,
``simple_inference.py``; used as DDPO's aesthetic reward, ``ddpo_pytorch/aesthetic_scorer.py``): the CLIP
ViT-L/14 image embedding (``openai/clip-vit-large-patch14``), L2-normalised, through a linear MLP::

    layers = Sequential(Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
                        Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1))

so the published ``sac+logos+ava1-l14-linearMSE.pth`` holds the plain state dict ``layers.{0,2,4,6,7}.
{weight,bias}`` (the ReLUs are commented out in the original: the head is linear). The first layer's input
size follows the CLIP projection dim, so tiny test models work.

Both run without gradients on ``--device`` in ``--dtype``; scores are returned as float32 Python floats.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.judges.common import rgb_images, torch_device, torch_dtype

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_WEIGHTS_NAME = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_WEIGHTS_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
#: Hidden sizes after the input layer, and the dropout after each of the first three linears.
AESTHETIC_HIDDEN = (1024, 128, 64, 16, 1)
_AESTHETIC_DROPOUT = (0.2, 0.2, 0.1)


# -- shared helpers -------------------------------------------------------------------------------------


def features(output: Any):
    """The projected embedding from ``get_image_features`` / ``get_text_features``.

    transformers < 4.57 returns the tensor itself; transformers 5 returns a ``BaseModelOutputWithPooling``
    whose ``pooler_output`` holds the projected features.
    """
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None and isinstance(output, tuple):
        pooled = output[1] if len(output) > 1 else output[0]
    if pooled is None:
        raise PrefkitError(f"unexpected CLIP feature output of type {type(output).__name__}")
    return pooled


def _to_device(module, device):
    try:
        return module.to(device)
    except (AssertionError, RuntimeError) as exc:  # e.g. "Torch not compiled with CUDA enabled"
        raise PrefkitError(f"--device {device}: cannot move the judge there: {exc}") from exc


def _load(what: str, loader, name: str, hint: str, **kwargs):
    """``loader(name, **kwargs)`` with a PrefkitError that says what failed and what to pass instead.

    transformers' "Loading weights" progress bar is hidden meanwhile (prefkit draws its own); its
    warnings (e.g. weights not found in the checkpoint) are kept.
    """
    import transformers.utils.logging as t_log

    bars = t_log.is_progress_bar_enabled()
    t_log.disable_progress_bar()
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise PrefkitError(f"cannot load the {what} {name!r}: {exc}\n{hint}") from exc
    finally:
        if bars:
            t_log.enable_progress_bar()


def _no_method(source: str, method: str | None) -> None:
    if method is not None:
        raise PrefkitError(f"--method {method!r}: the {source} judge has no methods; leave --method out")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _batches(n: int, size: int):
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _check_lengths(images: Sequence[Any], prompts: Sequence[str]) -> None:
    if len(images) != len(prompts):
        raise PrefkitError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")


# -- PickScore ------------------------------------------------------------------------------------------


class PickScoreScorer:
    """PickScore: ``logit_scale.exp() * cos(text features, image features)`` for each (image, prompt).

    Options: ``model`` (default yuvalkirstain/PickScore_v1), ``revision`` (of the model), ``processor``
    (default laion/CLIP-ViT-H-14-laion2B-s32B-b79K), ``device``, ``dtype``, ``batch_size``.
    """

    def __init__(self, options) -> None:
        from transformers import AutoModel, AutoProcessor

        _no_method("pickscore", options.method)
        self.model_id = options.model or PICKSCORE_MODEL
        self.processor_id = options.processor or PICKSCORE_PROCESSOR
        self.revision = options.revision
        self.device = torch_device(options.device)
        self.dtype = torch_dtype(options.dtype)
        self.batch_size = options.batch_size
        hint = (
            "Pass --model / --processor with a local folder or a hub id that is in the local cache "
            f"(defaults: {PICKSCORE_MODEL}, {PICKSCORE_PROCESSOR})."
        )
        self.processor = _load("PickScore processor", AutoProcessor.from_pretrained, self.processor_id, hint)
        model = _load(
            "PickScore model",
            AutoModel.from_pretrained,
            self.model_id,
            hint,
            revision=self.revision,
            dtype=self.dtype,
        )
        if not (hasattr(model, "get_image_features") and hasattr(model, "logit_scale")):
            raise PrefkitError(f"{self.model_id!r} is a {type(model).__name__}, not a CLIP model (PickScore)")
        self.model = _to_device(model, self.device).eval()

    def info(self) -> dict[str, Any]:
        return {
            "name": "pickscore",
            "model": self.model_id,
            "revision": self.revision,
            "processor": self.processor_id,
            "weights": None,
            "method": None,
            "score": "logit_scale.exp() * cos(text, image)",
        }

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        import torch

        _check_lengths(images, prompts)
        images = rgb_images(images)
        out: list[float] = []
        with torch.no_grad():
            scale = self.model.logit_scale.exp().float()
            for part in _batches(len(images), self.batch_size):
                image_inputs = self.processor(images=images[part], return_tensors="pt")
                text_inputs = self.processor(
                    text=list(prompts[part]),
                    padding=True,
                    truncation=True,
                    max_length=77,
                    return_tensors="pt",
                )
                pixels = image_inputs["pixel_values"].to(self.device, self.dtype)
                img = features(self.model.get_image_features(pixel_values=pixels)).float()
                txt = features(
                    self.model.get_text_features(
                        **{k: v.to(self.device) for k, v in text_inputs.items() if k != "token_type_ids"}
                    )
                ).float()
                img = img / img.norm(dim=-1, keepdim=True)
                txt = txt / txt.norm(dim=-1, keepdim=True)
                out += (scale * (txt * img).sum(dim=-1)).cpu().tolist()
        return out


# -- LAION aesthetic predictor ------------------------------------------------------------------------------


def aesthetic_mlp(in_dim: int = 768):
    """The LAION aesthetic head: a module whose ``layers`` Sequential matches the published state dict."""
    import torch.nn as nn

    dims = (in_dim, *AESTHETIC_HIDDEN)
    mods: list[nn.Module] = []
    for i in range(len(AESTHETIC_HIDDEN)):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(_AESTHETIC_DROPOUT):
            mods.append(nn.Dropout(_AESTHETIC_DROPOUT[i]))
    head = nn.Module()
    head.layers = nn.Sequential(*mods)
    return head


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """A plain state dict from a ``.safetensors`` file or a ``.pth`` / ``.pt`` file (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise PrefkitError(f"--weights {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise PrefkitError(f"--weights {str(path)!r}: not a readable safetensors file: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors, or objects weights_only refuses
        raise PrefkitError(
            f"--weights {str(path)!r}: cannot be read by torch.load(weights_only=True) as a plain state dict: {exc}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a Lightning checkpoint
    if not isinstance(state, dict):
        raise PrefkitError(f"--weights {str(path)!r}: holds a {type(state).__name__}, not a state dict")
    return state


class AestheticScorer:
    """LAION aesthetic score: MLP(normalised CLIP image embedding); prompts are ignored.

    Options: ``weights`` (required: the MLP, ``sac+logos+ava1-l14-linearMSE.pth`` or a .safetensors with
    the same keys), ``model`` (CLIP, default openai/clip-vit-large-patch14), ``revision``, ``processor``
    (default: the model's own), ``device``, ``dtype``, ``batch_size``.
    """

    def __init__(self, options) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel

        _no_method("aesthetic", options.method)
        if not options.weights:
            raise PrefkitError(
                "--source aesthetic needs --weights FILE: the LAION aesthetic predictor head "
                f"{AESTHETIC_WEIGHTS_NAME} from github.com/christophschuhmann/improved-aesthetic-predictor "
                f"({AESTHETIC_WEIGHTS_URL}); it goes with the CLIP model {AESTHETIC_CLIP}"
            )
        self.model_id = options.model or AESTHETIC_CLIP
        self.processor_id = options.processor or self.model_id
        self.revision = options.revision
        self.device = torch_device(options.device)
        self.dtype = torch_dtype(options.dtype)
        self.batch_size = options.batch_size
        self.weights = Path(options.weights)

        state = load_state_dict_file(self.weights)
        state = {(k if k.startswith("layers.") else f"layers.{k}"): v for k, v in state.items()}
        hint = f"Pass --model (and --processor) with a local folder or a cached hub id (default {AESTHETIC_CLIP})."
        processor_revision = self.revision if options.processor is None else None
        self.processor = _load(
            "CLIP image processor",
            AutoImageProcessor.from_pretrained,
            self.processor_id,
            hint,
            revision=processor_revision,
        )
        model = _load(
            "CLIP model",
            AutoModel.from_pretrained,
            self.model_id,
            hint,
            revision=self.revision,
            dtype=self.dtype,
        )
        if not hasattr(model, "get_image_features"):
            raise PrefkitError(f"{self.model_id!r} is a {type(model).__name__}, not a CLIP model")
        self.clip = _to_device(model, self.device).eval()

        in_dim = int(getattr(model.config, "projection_dim", 768))
        first = state.get("layers.0.weight")
        if first is not None and tuple(first.shape) != (AESTHETIC_HIDDEN[0], in_dim):
            raise PrefkitError(
                f"--weights {str(self.weights)!r}: its first layer takes {first.shape[-1]}-d embeddings but "
                f"{self.model_id!r} projects images to {in_dim}-d (the published head goes with {AESTHETIC_CLIP})"
            )
        mlp = aesthetic_mlp(in_dim)
        try:
            mlp.load_state_dict(state)
        except RuntimeError as exc:
            expected = ", ".join(mlp.state_dict())
            raise PrefkitError(
                f"--weights {str(self.weights)!r} does not match the LAION aesthetic MLP (expected keys {expected}): "
                f"{exc}"
            ) from exc
        self.mlp = mlp.to(self.device, torch.float32).eval()
        self.weights_sha256 = sha256_file(self.weights)

    def info(self) -> dict[str, Any]:
        return {
            "name": "aesthetic",
            "model": self.model_id,
            "revision": self.revision,
            "processor": self.processor_id,
            "weights": self.weights.name,
            "weights_sha256": self.weights_sha256,
            "method": None,
            "score": "MLP(normalised CLIP image embedding)",
        }

    def embed(self, images: Sequence[Any]):
        """L2-normalised CLIP image embeddings (float32, on the judge's device)."""
        import torch

        with torch.no_grad():
            inputs = self.processor(images=rgb_images(images), return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            emb = features(self.clip.get_image_features(pixel_values=pixels)).float()
            return emb / torch.linalg.vector_norm(emb, dim=-1, keepdim=True)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        import torch

        out: list[float] = []
        with torch.no_grad():
            for part in _batches(len(images), self.batch_size):
                out += self.mlp.layers(self.embed(images[part])).squeeze(-1).cpu().tolist()
        if not all(math.isfinite(x) for x in out):
            raise PrefkitError("the aesthetic head produced a non-finite score (try --dtype float32)")
        return out
