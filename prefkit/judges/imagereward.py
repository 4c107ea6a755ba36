"""ImageReward (Xu et al. 2023, github.com/THUDM/ImageReward) as a prefkit scorer.

What ImageReward computes (``ImageReward/ImageReward.py`` of the pip package image-reward 1.5, the same as
the repository; the model code is BLIP's, ``ImageReward/models/BLIP``):

* ``ImageReward.pt`` (Hub repository ``THUDM/ImageReward``) is the state dict of ``ImageReward``:
  ``blip`` = ``BLIP_Pretrain(image_size=224, vit='large', med_config)`` and ``mlp`` = ``MLP(768)``;
* the image encoder is BLIP's ViT-L (``create_vit('large', 224)``: patch 16, width 1024, depth 24, 16 heads,
  MLP ratio 4, qkv bias, LayerNorm eps 1e-6, GELU); its output is the whole token sequence after the final
  norm;
* the text encoder is BLIP's ``med.py`` BERT with cross-attention to the image tokens in every layer
  (``med_config.json``: BERT-base, vocabulary 30524, ``add_cross_attention``; ``encoder_width`` set to the
  ViT width 1024 by ``BLIP_Pretrain``), run bidirectionally (not as a decoder) with an all-ones image mask;
* the prompt is tokenised by BLIP's ``init_tokenizer()`` (``bert-base-uncased`` plus ``[DEC]`` as BOS and
  ``[ENC]``) with ``padding='max_length', truncation=True, max_length=35``; the ids are used as they are
  (``[CLS]`` first: ImageReward does not swap in ``[ENC]`` as BLIP's ITM head does);
* ``reward = (MLP(last_hidden_state[:, 0]) - 0.16717362830052426) / 1.0333394966054072`` (``self.mean`` and
  ``self.std``), where ``MLP`` is the LAION aesthetic head's layout: Linear(768, 1024), Dropout(0.2),
  Linear(1024, 128), Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1) (the ReLUs
  are commented out);
* the image goes through ``_transform(224)``: torchvision ``Resize(224, BICUBIC)`` (shorter side to 224,
  the longer to ``int(224 * long / short)``, PIL bicubic), ``CenterCrop(224)`` (offsets
  ``int(round((side - 224) / 2))``), RGB, ``ToTensor``, ``Normalize`` with OpenAI's CLIP mean
  (0.48145466, 0.4578275, 0.40821073) and std (0.26862954, 0.26130258, 0.27577711).

How prefkit computes it, without the image-reward package (it pins timm 0.6.13 and fairscale 0.4.13, its
torchvision would replace prefkit's pinned torch, and its ``med.py`` imports ``apply_chunking_to_forward``
and friends from ``transformers.modeling_utils``, which transformers 5 no longer has): the checkpoint's
ViT is renamed into transformers' ``BlipVisionModel`` (the same ViT: fused ``qkv``, pre-norm blocks, final
LayerNorm) and its BERT loads as it is into ``BlipTextModel`` (transformers' port of ``med.py``, keys
unchanged), configured from ``med_config.json``; the ViT's size is read from the checkpoint's tensor shapes
(BLIP's ViT-B and ViT-L both have 64-d heads). The image transform above is done with PIL and torch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.judges.checkpoints import checkpoint_file, hub_file, read_state_dict
from prefkit.judges.clip import (
    _batches,
    _check_lengths,
    _load,
    _no_method,
    _to_device,
    aesthetic_mlp,
    sha256_file,
)
from prefkit.judges.common import rgb_images, torch_device, torch_dtype
from prefkit.judges.hps import CLIP_MEAN, CLIP_STD, load_empty_then_assign

IR_REPO = "THUDM/ImageReward"
IR_FILE = "ImageReward.pt"
IR_MED_CONFIG = "med_config.json"
IR_TOKENIZER = "bert-base-uncased"
#: ``ImageReward.__init__``: ``self.mean``, ``self.std`` (the reward is (MLP output - mean) / std).
IR_MEAN = 0.16717362830052426
IR_STD = 1.0333394966054072
#: ``ImageReward.score``: ``max_length=35``.
IR_MAX_LENGTH = 35
_HEAD_DIM = 64  # BLIP's ViT-B (768 / 12) and ViT-L (1024 / 16)
_VIT_EPS = 1e-6  # BLIP vit.py: norm_layer = partial(nn.LayerNorm, eps=1e-6)

#: BLIP's ``configs/med_config.json`` (used when a --weights file has no med_config.json beside it).
BLIP_MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}

_VIT_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_VIT_BLOCK = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")
_VIT = "blip.visual_encoder."
_BERT = "blip.text_encoder."
_MLP = "mlp."


def split_checkpoint(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """ImageReward's state dict as (``BlipVisionModel`` state, ``BlipTextModel`` state, MLP ``layers.*``).

    Keys the score never uses are left out: BLIP's other parts (``vision_proj`` / ``text_proj``, the
    contrastive heads; ImageReward itself loads with ``strict=False``) and the text embeddings'
    ``position_ids`` buffer. A key inside the ViT that the mapping does not know is an error.
    """
    vit: dict[str, Any] = {}
    bert: dict[str, Any] = {}
    mlp: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith(_VIT):
            rest = key[len(_VIT) :]
            if rest in _VIT_TOP:
                vit[_VIT_TOP[rest]] = value
                continue
            m = _BLOCK_KEY.fullmatch(rest)
            if m and m.group(2) in _VIT_BLOCK:
                vit[f"encoder.layers.{m.group(1)}.{_VIT_BLOCK[m.group(2)]}.{m.group(3)}"] = value
            else:
                unknown.append(key)
        elif key.startswith(_BERT):
            rest = key[len(_BERT) :]
            if rest != "embeddings.position_ids":
                bert[rest] = value
        elif key.startswith(_MLP):
            mlp[key[len(_MLP) :]] = value
        elif not key.startswith("blip."):  # other BLIP parts (vision_proj, text_proj) are not used
            unknown.append(key)
    if unknown or not (vit and bert and mlp):
        shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        missing = [name for name, part in (("ViT", vit), ("BERT", bert), ("MLP", mlp)) if not part]
        problems = ([f"unexpected keys {shown}"] if unknown else []) + [f"no {m} weights" for m in missing]
        raise PrefkitError(
            "the checkpoint is not ImageReward's state dict (blip.visual_encoder.*, blip.text_encoder.*, "
            f"mlp.layers.*): {'; '.join(problems)}"
        )
    return vit, bert, mlp


def vit_config(vit: dict[str, Any]):
    """A ``BlipVisionConfig`` read off the ViT's tensor shapes (image size, patch, width, depth, MLP size)."""
    from transformers import BlipVisionConfig

    try:
        width = int(vit["embeddings.class_embedding"].shape[-1])
        patch = int(vit["embeddings.patch_embedding.weight"].shape[-1])
        positions = int(vit["embeddings.position_embedding"].shape[1])
        inner = int(vit["encoder.layers.0.mlp.fc1.weight"].shape[0])
    except KeyError as exc:
        raise PrefkitError(f"the ImageReward checkpoint's ViT lacks {exc}") from exc
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1 or width % _HEAD_DIM:
        raise PrefkitError(
            f"the ImageReward checkpoint's ViT ({positions} positions, width {width}) is not a square-image "
            f"BLIP ViT with {_HEAD_DIM}-d heads"
        )
    layers = 1 + max(int(k.split(".")[2]) for k in vit if k.startswith("encoder.layers."))
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=inner,
        num_hidden_layers=layers,
        num_attention_heads=width // _HEAD_DIM,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=_VIT_EPS,
        attention_dropout=0.0,
    )


def text_config(med: dict[str, Any], encoder_width: int):
    """A ``BlipTextConfig`` from ``med_config.json``, with cross-attention to ``encoder_width``-d image tokens."""
    from transformers import BlipTextConfig

    try:
        return BlipTextConfig(
            vocab_size=int(med["vocab_size"]),
            hidden_size=int(med["hidden_size"]),
            encoder_hidden_size=encoder_width,  # BLIP_Pretrain: encoder_config.encoder_width = vision_width
            intermediate_size=int(med["intermediate_size"]),
            num_hidden_layers=int(med["num_hidden_layers"]),
            num_attention_heads=int(med["num_attention_heads"]),
            max_position_embeddings=int(med["max_position_embeddings"]),
            hidden_act=med.get("hidden_act", "gelu"),
            layer_norm_eps=float(med.get("layer_norm_eps", 1e-12)),
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=med.get("pad_token_id", 0),
            bos_token_id=None,
            eos_token_id=None,
            sep_token_id=None,
            is_decoder=True,  # builds the cross-attention layers; forward runs with is_decoder=False
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PrefkitError(f"{IR_MED_CONFIG}: not a BLIP BERT config ({exc})") from exc


def ir_pixels(images: Sequence[Any], size: int):
    """ImageReward's ``_transform(size)`` on RGB images: a float tensor (N, 3, size, size)."""
    import numpy as np
    import torch
    from PIL import Image

    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    out = []
    for image in rgb_images(images):
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        if short != size:  # torchvision's Resize(int): the shorter side to `size`, the other truncated
            new_long = int(size * long / short)
            image = image.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
            w, h = image.size
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((x - mean) / std)
    return torch.stack(out)


class _ImageReward:
    """BLIP's ViT and BERT and the reward head, as transformers modules (eval mode, no dropout)."""

    def __init__(self, vision, text, head) -> None:
        self.vision, self.text, self.head = vision, text, head

    def reward(self, pixels, input_ids, attention_mask):
        import torch

        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        hidden = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            is_decoder=False,
        ).last_hidden_state
        raw = self.head.layers(hidden[:, 0, :].float()).squeeze(-1)
        return (raw - IR_MEAN) / IR_STD


class ImageRewardScorer:
    """ImageReward: BLIP (ViT-L + cross-attention BERT) and an MLP on the [CLS] feature, normalised by
    ImageReward's fixed mean and std.

    Options: ``model`` (default ``THUDM/ImageReward``: a Hub repository or a local folder holding
    ``ImageReward.pt`` and ``med_config.json``, or the ``.pt`` file itself), ``revision`` (of that Hub
    repository), ``weights`` (the checkpoint file; overrides ``model``; its ``med_config.json`` is looked
    for beside it, else BLIP's is used), ``processor`` (default ``bert-base-uncased``: the tokenizer),
    ``device``, ``dtype``, ``batch_size``.
    """

    def __init__(self, options) -> None:
        import torch
        from transformers import AutoTokenizer, BlipTextModel, BlipVisionModel

        _no_method("imagereward", options.method)
        self.model_id = options.model or (None if options.weights else IR_REPO)
        self.revision = options.revision
        self.processor_id = options.processor or IR_TOKENIZER
        self.device = torch_device(options.device)
        self.dtype = torch_dtype(options.dtype)
        self.batch_size = options.batch_size
        self.weights = checkpoint_file(
            "imagereward", IR_FILE, model=self.model_id, revision=self.revision, weights=options.weights
        )
        med_path = self._med_config_path(options.weights)
        med = self._read_med_config(med_path)

        hint = f"Pass --processor with a local folder or cached Hub id of the BERT tokenizer (default {IR_TOKENIZER})."
        tokenizer = _load("ImageReward tokenizer", AutoTokenizer.from_pretrained, self.processor_id, hint)
        # BLIP's init_tokenizer(): [DEC] as BOS and [ENC]; vocabulary 30522 + 2 = med_config's 30524
        tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        self.tokenizer = tokenizer

        vit_state, bert_state, mlp_state = split_checkpoint(read_state_dict("imagereward", self.weights))
        vcfg = vit_config(vit_state)
        tcfg = text_config(med, vcfg.hidden_size)
        if len(tokenizer) > tcfg.vocab_size:
            raise PrefkitError(
                f"--processor {self.processor_id!r}: its {len(tokenizer)} tokens do not fit the text encoder's "
                f"vocabulary of {tcfg.vocab_size} ({IR_MED_CONFIG})"
            )
        what = f"ImageReward ({self.weights.name})"
        vision = load_empty_then_assign(lambda: BlipVisionModel(vcfg), vit_state, what + " ViT")
        text = load_empty_then_assign(
            lambda: BlipTextModel(tcfg, add_pooling_layer=False), bert_state, what + " BERT"
        )
        head = aesthetic_mlp(int(tcfg.hidden_size))
        try:
            head.load_state_dict(mlp_state)
        except RuntimeError as exc:
            raise PrefkitError(f"the {what} MLP does not fit ImageReward's MLP(768) layout: {exc}") from exc
        vision = _to_device(vision.to(self.dtype), self.device).eval()
        text = _to_device(text.to(self.dtype), self.device).eval()
        head = head.to(self.device, torch.float32).eval()
        self.model = _ImageReward(vision, text, head)
        self.image_size = int(vcfg.image_size)
        self.weights_sha256 = sha256_file(self.weights)
        self.med_config = med_path.name if med_path else None

    def _med_config_path(self, weights: str | None) -> Path | None:
        """med_config.json beside the checkpoint (a folder, or a --weights file), or from the Hub repository."""
        if weights or Path(self.model_id).expanduser().exists():
            beside = self.weights.with_name(IR_MED_CONFIG)
            return beside if beside.is_file() else None
        return hub_file("imagereward", self.model_id, IR_MED_CONFIG, self.revision)

    @staticmethod
    def _read_med_config(path: Path | None) -> dict[str, Any]:
        if path is None:
            return dict(BLIP_MED_CONFIG)
        try:
            med = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise PrefkitError(f"{path}: not a readable JSON file: {exc}") from exc
        if not isinstance(med, dict):
            raise PrefkitError(f"{path}: not a JSON object")
        return med

    def info(self) -> dict[str, Any]:
        return {
            "name": "imagereward",
            "model": self.model_id,
            "revision": self.revision,
            "processor": self.processor_id,
            "weights": self.weights.name,
            "weights_sha256": self.weights_sha256,
            "med_config": self.med_config,
            "method": None,
            "score": f"(MLP(BLIP [CLS] feature) - {IR_MEAN}) / {IR_STD}",
        }

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        import torch

        _check_lengths(images, prompts)
        out: list[float] = []
        with torch.no_grad():
            for part in _batches(len(images), self.batch_size):
                pixels = ir_pixels(images[part], self.image_size).to(self.device, self.dtype)
                text = self.tokenizer(
                    list(prompts[part]),
                    padding="max_length",
                    truncation=True,
                    max_length=IR_MAX_LENGTH,
                    return_tensors="pt",
                )
                out += (
                    self.model.reward(
                        pixels, text["input_ids"].to(self.device), text["attention_mask"].to(self.device)
                    )
                    .cpu()
                    .tolist()
                )
        if not all(math.isfinite(x) for x in out):
            raise PrefkitError("the ImageReward head produced a non-finite score (try --dtype float32)")
        return out
