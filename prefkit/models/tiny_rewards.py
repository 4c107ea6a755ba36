"""Tiny, randomly initialised HPSv2.1 and ImageReward judges in their published formats (no downloads).

Each builder writes one folder that ``prefkit label --source hps|imagereward --judge-model FOLDER
--processor FOLDER`` loads by the same path as the real checkpoints:

* :func:`build_tiny_hps`: ``HPS_v2.1_compressed.pt`` = ``{"state_dict": ...}`` in OpenCLIP's key layout
  (``visual.conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``, ``text_projection`` ...; float16,
  as a "compressed" checkpoint) next to a CLIP ``config.json`` (GELU, as ViT-H-14) and a CLIP BPE tokenizer,
  the two things prefkit reads from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``;
* :func:`build_tiny_imagereward`: ``ImageReward.pt`` with ImageReward's keys (``blip.visual_encoder.*``
  timm/BLIP ViT, ``blip.text_encoder.*`` BLIP ``med.py`` BERT with cross-attention, ``mlp.layers.*``, plus the
  unused ``blip.vision_proj`` / ``blip.text_proj`` and ``position_ids`` the real file holds), a tiny
  ``med_config.json`` and a WordPiece BERT tokenizer (lower-cased, as bert-base-uncased).

The weights are drawn directly in the published layouts (seeded normal tensors, never through the key
mappings of prefkit.judges.hps / prefkit.judges.imagereward), so a test that computes the score from these
files by hand checks those mappings. 32 px images, 8 px patches.

Command line::

    python -m prefkit.models.tiny_rewards DIR      # DIR/hps, DIR/imagereward
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["build_tiny_hps", "build_tiny_imagereward"]

IMAGE_SIZE = 32
_PATCH = 8
HPS_WIDTH = 32  # both towers
HPS_EMBED = 16
IR_VIT_WIDTH = 128  # two 64-d heads, as BLIP's ViTs have 64-d heads
IR_TEXT_WIDTH = 32
_LAYERS = 2


_EMBEDDINGS = {
    "cls_token",
    "pos_embed",
    "class_embedding",
    "positional_embedding",
    "token_embedding",
    "word_embeddings",
    "position_embeddings",
}


def _draw(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Any]:
    """Seeded tensors: LayerNorm weights N(1, 0.1^2), embeddings N(0, 1), everything else N(0, 0.2^2)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        x = torch.randn(shape, generator=gen)
        name = key.removesuffix(".weight").rsplit(".", 1)[-1]
        if key.endswith(".weight") and ("norm" in name.lower() or name.startswith("ln_")):
            x = 1.0 + 0.1 * x
        elif name not in _EMBEDDINGS:
            x = 0.2 * x
        out[key] = x.contiguous()
    return out


# -- HPSv2.1 ---------------------------------------------------------------------------------------------


def _openclip_block_shapes(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.ln_1.weight": (width,),
        f"{prefix}.ln_1.bias": (width,),
        f"{prefix}.attn.in_proj_weight": (3 * width, width),
        f"{prefix}.attn.in_proj_bias": (3 * width,),
        f"{prefix}.attn.out_proj.weight": (width, width),
        f"{prefix}.attn.out_proj.bias": (width,),
        f"{prefix}.ln_2.weight": (width,),
        f"{prefix}.ln_2.bias": (width,),
        f"{prefix}.mlp.c_fc.weight": (4 * width, width),
        f"{prefix}.mlp.c_fc.bias": (4 * width,),
        f"{prefix}.mlp.c_proj.weight": (width, 4 * width),
        f"{prefix}.mlp.c_proj.bias": (width,),
    }


def openclip_shapes(vocab: int, context: int) -> dict[str, tuple[int, ...]]:
    """The state dict layout of OpenCLIP's ``CLIP`` (ViT image tower, built-in text tower), tiny sizes."""
    w, e, grid = HPS_WIDTH, HPS_EMBED, IMAGE_SIZE // _PATCH
    shapes: dict[str, tuple[int, ...]] = {
        "positional_embedding": (context, w),
        "text_projection": (w, e),
        "logit_scale": (),
        "visual.class_embedding": (w,),
        "visual.positional_embedding": (grid * grid + 1, w),
        "visual.proj": (w, e),
        "visual.conv1.weight": (w, 3, _PATCH, _PATCH),
        "visual.ln_pre.weight": (w,),
        "visual.ln_pre.bias": (w,),
    }
    for i in range(_LAYERS):
        shapes |= _openclip_block_shapes(f"visual.transformer.resblocks.{i}", w)
    shapes |= {
        "visual.ln_post.weight": (w,),
        "visual.ln_post.bias": (w,),
        "token_embedding.weight": (vocab, w),
    }
    for i in range(_LAYERS):
        shapes |= _openclip_block_shapes(f"transformer.resblocks.{i}", w)
    shapes |= {"ln_final.weight": (w,), "ln_final.bias": (w,)}
    return shapes


def _hps_config(tokenizer):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    from prefkit.models.parts import CLIP_MAX_LENGTH

    common = {
        "hidden_size": HPS_WIDTH,
        "intermediate_size": 4 * HPS_WIDTH,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": 4,
        "projection_dim": HPS_EMBED,
        "hidden_act": "gelu",  # ViT-H-14 is built with force_quick_gelu=False
    }
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **common,
    )
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=_PATCH, **common)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=HPS_EMBED)


def _write_hps(folder: Path, seed: int) -> None:
    import torch

    from prefkit.judges.hps import HPS_FILE
    from prefkit.models.parts import CLIP_MAX_LENGTH, clip_tokenizer

    tokenizer = clip_tokenizer()
    _hps_config(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = _draw(openclip_shapes(len(tokenizer), CLIP_MAX_LENGTH), seed)
    state["logit_scale"] = torch.tensor(4.6052)  # log(100), as a trained CLIP's (HPS never uses it)
    torch.save({"state_dict": {k: v.half() for k, v in state.items()}}, folder / HPS_FILE)


def build_tiny_hps(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny HPSv2.1 judge folder (checkpoint + CLIP config + tokenizer) into ``path``."""
    from prefkit.models.parts import build_model_folder
    from prefkit.models.tiny_judges import _quiet

    return build_model_folder(None, path, seed, quiet=_quiet, write=_write_hps)


# -- ImageReward -----------------------------------------------------------------------------------------

_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert_tokenizer():
    """A lower-casing WordPiece tokenizer: the prompt words whole, and every ASCII letter, digit and
    punctuation mark alone and as a ``##`` continuation, so any ASCII prompt encodes without [UNK]."""
    from transformers import BertTokenizer

    from prefkit.models.parts import PROMPT_WORDS

    chars = [chr(c) for c in range(0x21, 0x7F) if not chr(c).isupper()]
    pieces = _BERT_SPECIALS + chars + ["##" + c for c in chars] + [w.lower() for w in PROMPT_WORDS]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)


def _vit_block_shapes(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.norm1.weight": (width,),
        f"{prefix}.norm1.bias": (width,),
        f"{prefix}.attn.qkv.weight": (3 * width, width),
        f"{prefix}.attn.qkv.bias": (3 * width,),
        f"{prefix}.attn.proj.weight": (width, width),
        f"{prefix}.attn.proj.bias": (width,),
        f"{prefix}.norm2.weight": (width,),
        f"{prefix}.norm2.bias": (width,),
        f"{prefix}.mlp.fc1.weight": (4 * width, width),
        f"{prefix}.mlp.fc1.bias": (4 * width,),
        f"{prefix}.mlp.fc2.weight": (width, 4 * width),
        f"{prefix}.mlp.fc2.bias": (width,),
    }


def _bert_attention_shapes(prefix: str, width: int, kv_width: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.self.query.weight": (width, width),
        f"{prefix}.self.query.bias": (width,),
        f"{prefix}.self.key.weight": (width, kv_width),
        f"{prefix}.self.key.bias": (width,),
        f"{prefix}.self.value.weight": (width, kv_width),
        f"{prefix}.self.value.bias": (width,),
        f"{prefix}.output.dense.weight": (width, width),
        f"{prefix}.output.dense.bias": (width,),
        f"{prefix}.output.LayerNorm.weight": (width,),
        f"{prefix}.output.LayerNorm.bias": (width,),
    }


def imagereward_shapes(med: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """ImageReward's state dict layout (``blip`` = BLIP_Pretrain, ``mlp`` = MLP), sizes from ``med`` and
    the tiny ViT."""
    from prefkit.judges.clip import AESTHETIC_HIDDEN

    v, t, grid = IR_VIT_WIDTH, int(med["hidden_size"]), IMAGE_SIZE // _PATCH
    vit = "blip.visual_encoder"
    shapes: dict[str, tuple[int, ...]] = {
        f"{vit}.cls_token": (1, 1, v),
        f"{vit}.pos_embed": (1, grid * grid + 1, v),
        f"{vit}.patch_embed.proj.weight": (v, 3, _PATCH, _PATCH),
        f"{vit}.patch_embed.proj.bias": (v,),
    }
    for i in range(_LAYERS):
        shapes |= _vit_block_shapes(f"{vit}.blocks.{i}", v)
    shapes |= {f"{vit}.norm.weight": (v,), f"{vit}.norm.bias": (v,)}
    bert = "blip.text_encoder"
    shapes |= {
        f"{bert}.embeddings.word_embeddings.weight": (int(med["vocab_size"]), t),
        f"{bert}.embeddings.position_embeddings.weight": (int(med["max_position_embeddings"]), t),
        f"{bert}.embeddings.LayerNorm.weight": (t,),
        f"{bert}.embeddings.LayerNorm.bias": (t,),
    }
    inner = int(med["intermediate_size"])
    for i in range(int(med["num_hidden_layers"])):
        layer = f"{bert}.encoder.layer.{i}"
        shapes |= _bert_attention_shapes(f"{layer}.attention", t, t)
        shapes |= _bert_attention_shapes(f"{layer}.crossattention", t, v)
        shapes |= {
            f"{layer}.intermediate.dense.weight": (inner, t),
            f"{layer}.intermediate.dense.bias": (inner,),
            f"{layer}.output.dense.weight": (t, inner),
            f"{layer}.output.dense.bias": (t,),
            f"{layer}.output.LayerNorm.weight": (t,),
            f"{layer}.output.LayerNorm.bias": (t,),
        }
    shapes |= {
        "blip.vision_proj.weight": (256, v),
        "blip.vision_proj.bias": (256,),
        "blip.text_proj.weight": (256, t),
        "blip.text_proj.bias": (256,),
    }
    dims = (t, *AESTHETIC_HIDDEN)
    for n, i in enumerate((0, 2, 4, 6, 7)):
        shapes |= {f"mlp.layers.{i}.weight": (dims[n + 1], dims[n]), f"mlp.layers.{i}.bias": (dims[n + 1],)}
    return shapes


def _write_imagereward(folder: Path, seed: int) -> None:
    import torch

    from prefkit.judges.imagereward import BLIP_MED_CONFIG, IR_FILE, IR_MED_CONFIG

    tokenizer = _bert_tokenizer()
    tokenizer.save_pretrained(folder)
    med = dict(BLIP_MED_CONFIG)
    med |= {
        "hidden_size": IR_TEXT_WIDTH,
        "intermediate_size": 2 * IR_TEXT_WIDTH,
        "num_attention_heads": 4,
        "num_hidden_layers": _LAYERS,
        "max_position_embeddings": 64,
        "vocab_size": len(tokenizer) + 2,  # + [DEC] and [ENC], as BLIP's 30522 + 2 = 30524
        "encoder_width": IR_VIT_WIDTH,
    }
    (folder / IR_MED_CONFIG).write_text(json.dumps(med, indent=2) + "\n")
    state = _draw(imagereward_shapes(med), seed)
    # the linear MLP's weights at std 1 / sqrt(fan-in), so the rewards stay O(1)
    for key in [k for k in state if k.startswith("mlp.") and k.endswith(".weight")]:
        state[key] = state[key] / (0.2 * state[key].shape[1] ** 0.5)
    ml = int(med["max_position_embeddings"])
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(ml).expand((1, -1)).clone()
    torch.save(state, folder / IR_FILE)


def build_tiny_imagereward(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny ImageReward judge folder (checkpoint + med_config.json + tokenizer) into ``path``."""
    from prefkit.models.parts import build_model_folder
    from prefkit.models.tiny_judges import _quiet

    return build_model_folder(None, path, seed, quiet=_quiet, write=_write_imagereward)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefkit.models.tiny_rewards", description="Build tiny HPSv2.1 and ImageReward judges."
    )
    parser.add_argument("path", help="output folder: PATH/hps and PATH/imagereward")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = Path(args.path)
    print(build_tiny_hps(root / "hps", seed=args.seed))
    print(build_tiny_imagereward(root / "imagereward", seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
