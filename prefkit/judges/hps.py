"""HPSv2.1 (Human Preference Score v2.1, Wu et al. 2023, github.com/tgxs002/HPSv2) as a prefkit scorer.

What HPSv2 computes (``hpsv2/img_score.py``, ``score()``; the pip packages hpsv2 / hpsv2x 1.2.0 ship the
same code):

* the model is OpenCLIP ``ViT-H-14`` (``create_model_and_transforms('ViT-H-14', 'laion2B-s32B-b79K', ...,
  force_quick_gelu=False, light_augmentation=True, output_dict=True)``) with the fine-tuned weights
  ``checkpoint['state_dict']`` of ``HPS_v2.1_compressed.pt`` from the Hub repository ``xswu/HPSv2``
  (``hpsv2/utils.py``: ``hps_version_map = {"v2.0": "HPS_v2_compressed.pt", "v2.1":
  "HPS_v2.1_compressed.pt"}``);
* ``score = diagonal(image_features @ text_features.T)`` where ``CLIP.forward`` returns both feature sets
  L2-normalised (``encode_image(image, normalize=True)``): the cosine of image and prompt, with **no**
  logit scale (unlike PickScore);
* the prompt goes through OpenCLIP's ``tokenize`` (``tokenizer.py``: ``basic_clean`` = ``ftfy.fix_text`` and
  ``html.unescape`` twice, whitespace collapsed, lower case, the CLIP BPE, ``<start_of_text>`` ...
  ``<end_of_text>``, zero-padded to 77 tokens, truncated with ``<end_of_text>`` kept last; a literal
  ``<|endoftext|>`` in a prompt is text, not the special token); the text feature is taken at the
  end-of-text token;
* the image goes through ``preprocess_val`` = ``image_transform(224, is_train=False,
  resize_longest_max=True)`` (``hpsv2/src/open_clip/transform.py``): ``ToTensor()``, then
  ``ResizeMaxSize(224)``: the longest side scaled to 224 with torchvision's bicubic tensor resize (which
  antialiases) and the shorter side padded with zeros (black) to 224, centred, then ``Normalize`` with
  OpenAI's CLIP mean (0.48145466, 0.4578275, 0.40821073) and std (0.26862954, 0.26130258, 0.27577711)
  (``constants.py``; the ``laion2b_s32b_b79k`` pretrained config names no mean/std of its own).

How prefkit computes it, without the hpsv2 / open_clip packages (their torchvision would replace prefkit's
pinned torch, hpsv2x pins pytest 7.2 and protobuf < 4, and hpsv2's ``score()`` first downloads the
3.9 GB LAION ViT-H-14 weights it then overwrites): the OpenCLIP state dict is renamed to transformers'
``CLIPModel`` layout (:func:`openclip_to_hf`: ``in_proj_weight`` split into q/k/v, ``proj`` transposed into
a ``Linear``) and loaded into a ``CLIPModel`` built from the CLIP config of ``--processor`` (default
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, whose tokenizer is the same CLIP BPE). Only that repository's
``config.json`` and tokenizer files are read, not its weights. The preprocessing above is done in torch.

The prompt is cleaned as ``basic_clean`` does before transformers' tokenizer sees it (:func:`openclip_clean`):
with ftfy installed exactly so; without it (ftfy is not a prefkit dependency) curly quotes are uncurled,
Latin ligatures and full-width characters replaced (NFKC) and the text NFC-normalised, which is what ftfy
changes in ordinary prompts; its repair of mojibake (UTF-8 read as Latin-1) is left out.

Two deliberate differences, both where hpsv2 itself would fail: images are converted to RGB first (hpsv2
keeps RGBA, a 4-channel tensor its ViT cannot take), and an image whose longest side is already 224 px is
still padded to a square (hpsv2 leaves it unpadded, which its ViT cannot take either).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.judges.checkpoints import checkpoint_file, read_state_dict
from prefkit.judges.clip import _batches, _check_lengths, _load, _no_method, _to_device, features, sha256_file
from prefkit.judges.common import rgb_images, torch_device, torch_dtype

HPS_REPO = "xswu/HPSv2"
HPS_FILE = "HPS_v2.1_compressed.pt"
HPS_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
#: OpenAI CLIP's normalisation constants (open_clip ``constants.py``: OPENAI_DATASET_MEAN / _STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# OpenCLIP residual-block names -> transformers CLIPEncoderLayer names (q/k/v are split separately)
_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_RESBLOCK = re.compile(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)")


def openclip_to_hf(state: dict[str, Any]) -> dict[str, Any]:
    """An OpenCLIP ``CLIP`` state dict (ViT image tower, built-in text tower) in ``CLIPModel``'s key layout.

    ``attn_mask`` buffers (the text tower's causal mask, saved by older OpenCLIP) are dropped; any other
    key that has no counterpart is an error.
    """
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.endswith("attn_mask"):
            continue
        if key in _TOP:
            out[_TOP[key]] = value
            continue
        if key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        m = _RESBLOCK.fullmatch(key)
        if m is None:
            unknown.append(key)
            continue
        tower = "vision_model" if m.group(1) else "text_model"
        prefix, rest = f"{tower}.encoder.layers.{m.group(2)}", m.group(3)
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]  # weight | bias
            q, k, v = value.chunk(3, dim=0)
            for name, part in (("q", q), ("k", k), ("v", v)):
                out[f"{prefix}.self_attn.{name}_proj.{kind}"] = part.contiguous()
            continue
        module, _, param = rest.rpartition(".")
        if module not in _BLOCK:
            unknown.append(key)
            continue
        out[f"{prefix}.{_BLOCK[module]}.{param}"] = value
    if unknown:
        shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise PrefkitError(
            f"the checkpoint is not an OpenCLIP ViT CLIP state dict (as HPSv2's): unexpected keys {shown}"
        )
    return out


#: ftfy's ``uncurl_quotes``: U+02BC and U+2018-U+201B become ', U+201C-U+201F become ".
_QUOTES = {0x02BC: "'", **{c: "'" for c in range(0x2018, 0x201C)}, **{c: '"' for c in range(0x201C, 0x2020)}}
#: ftfy's ``fix_latin_ligatures`` (U+FB00-U+FB06) and ``fix_character_width`` (U+3000, U+FF01-U+FFEE): NFKC.
_COMPAT = re.compile("[\ufb00-\ufb06\u3000\uff01-\uffee]")


def openclip_clean(text: str) -> str:
    """OpenCLIP's ``whitespace_clean(basic_clean(text))``: ``ftfy.fix_text`` (or, without ftfy, its quote,
    ligature and character-width fixes and NFC), HTML entities unescaped twice, runs of whitespace as one
    space, stripped."""
    try:
        import ftfy
    except ImportError:
        text = _COMPAT.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text.translate(_QUOTES))
        text = unicodedata.normalize("NFC", text)
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def hps_pixels(images: Sequence[Any], size: int):
    """HPSv2's ``preprocess_val`` on RGB images: a float tensor (N, 3, size, size).

    ToTensor; the longest side scaled to ``size`` (``round(side * size / longest)``, bicubic with
    antialiasing, as torchvision's tensor resize); zero padding to ``size`` x ``size`` (left/top get half,
    rounded down); CLIP mean/std normalisation.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    out = []
    for image in rgb_images(images):
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        h, w = x.shape[1:]
        scale = size / float(max(h, w))
        if scale != 1.0:
            nh, nw = round(h * scale), round(w * scale)
            x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
            h, w = nh, nw
        pad_h, pad_w = size - h, size - w
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
        out.append((x - mean) / std)
    return torch.stack(out)


def load_empty_then_assign(make, state: dict[str, Any], what: str):
    """``make()`` with its parameters on the meta device (buffers real), then ``state`` assigned in
    (strict: every parameter must be there, no key may be left over)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        module = make()
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise PrefkitError(f"the {what} checkpoint does not fit the model: {exc}") from exc
    return module


class HPSScorer:
    """HPSv2.1: the cosine of the L2-normalised image and prompt features of HPS's fine-tuned OpenCLIP ViT-H-14.

    Options: ``model`` (default ``xswu/HPSv2``: a Hub repository or a local folder holding
    ``HPS_v2.1_compressed.pt``, or the ``.pt`` file itself), ``revision`` (of that Hub repository),
    ``weights`` (the checkpoint file; overrides ``model``), ``processor`` (default
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``: the CLIP config and tokenizer), ``device``, ``dtype``,
    ``batch_size``.
    """

    def __init__(self, options) -> None:
        from transformers import AutoConfig, AutoTokenizer, CLIPConfig, CLIPModel

        _no_method("hps", options.method)
        self.model_id = options.model or (None if options.weights else HPS_REPO)
        self.revision = options.revision
        self.processor_id = options.processor or HPS_PROCESSOR
        self.device = torch_device(options.device)
        self.dtype = torch_dtype(options.dtype)
        self.batch_size = options.batch_size
        self.weights = checkpoint_file(
            "hps", HPS_FILE, model=self.model_id, revision=self.revision, weights=options.weights
        )
        hint = (
            f"Pass --processor with a local folder or cached Hub id of the CLIP config and tokenizer "
            f"(default {HPS_PROCESSOR})."
        )
        config = _load("HPS CLIP config", AutoConfig.from_pretrained, self.processor_id, hint)
        if not isinstance(config, CLIPConfig):
            raise PrefkitError(
                f"--processor {self.processor_id!r}: a {type(config).__name__}, not a CLIP config (HPSv2 is "
                f"an OpenCLIP ViT-H-14; default {HPS_PROCESSOR})"
            )
        self.tokenizer = _load("HPS tokenizer", AutoTokenizer.from_pretrained, self.processor_id, hint)
        state = openclip_to_hf(read_state_dict("hps", self.weights))
        model = load_empty_then_assign(lambda: CLIPModel(config), state, f"HPS ({self.weights.name})")
        self.model = _to_device(model.to(self.dtype), self.device).eval()
        self.image_size = int(config.vision_config.image_size)
        self.context_length = int(config.text_config.max_position_embeddings)
        self.weights_sha256 = sha256_file(self.weights)

    def info(self) -> dict[str, Any]:
        return {
            "name": "hps",
            "model": self.model_id,
            "revision": self.revision,
            "processor": self.processor_id,
            "weights": self.weights.name,
            "weights_sha256": self.weights_sha256,
            "method": None,
            "score": "cos(image, text) of HPSv2.1's OpenCLIP ViT-H-14 (no logit scale)",
        }

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        import torch

        _check_lengths(images, prompts)
        out: list[float] = []
        with torch.no_grad():
            for part in _batches(len(images), self.batch_size):
                pixels = hps_pixels(images[part], self.image_size).to(self.device, self.dtype)
                # OpenCLIP's tokenize: padded to the full context, truncated with end-of-text kept last,
                # special-token strings in a prompt read as text; no attention mask (the causal mask already
                # hides everything after end-of-text)
                ids = self.tokenizer(
                    [openclip_clean(p) for p in prompts[part]],
                    padding="max_length",
                    truncation=True,
                    max_length=self.context_length,
                    split_special_tokens=True,
                    return_tensors="pt",
                )["input_ids"].to(self.device)
                img = features(self.model.get_image_features(pixel_values=pixels)).float()
                txt = features(self.model.get_text_features(input_ids=ids)).float()
                img = img / img.norm(dim=-1, keepdim=True)
                txt = txt / txt.norm(dim=-1, keepdim=True)
                out += (img * txt).sum(dim=-1).cpu().tolist()
        return out
