"""prefkit's hps / imagereward scorers against the hpsv2 and image-reward packages' own code, on the same
tiny random weights (not collected by pytest: the packages cannot live in prefkit's environment).

Why a separate environment: with prefkit's torch 2.13.0 installed, ``pip install hpsv2x`` (or hpsv2,
open_clip_torch, image-reward) resolves torchvision 0.29.1, which replaces torch with 2.14.1 and pulls the
CUDA 13 wheels; with torch pinned, torchvision 0.28.0 comes from PyPI as a CUDA build whose C ops do not
load next to torch 2.13.0+cpu; hpsv2x also pins pytest 7.2.0 and protobuf < 4, image-reward pins timm 0.6.13
and fairscale 0.4.13, and its BLIP code does not import under transformers 5.

Run (the reference environment, throwaway)::

    python -m prefkit.models.tiny_rewards /tmp/ref                  # prefkit's venv: tiny judges
    .venv/bin/python tests/reference/package_agreement.py prefkit /tmp/ref
    python3 -m venv /tmp/venv-ref
    /tmp/venv-ref/bin/pip install torch==2.13.0
    /tmp/venv-ref/bin/pip install -c <(echo torch==2.13.0) torchvision==0.28.0 timm==0.6.13 \
        transformers==4.46.3 ftfy regex clint
    /tmp/venv-ref/bin/pip install --no-deps image-reward==1.5 hpsv2x==1.2.0
    # torchvision's CUDA build: empty torchvision/_meta_registrations.py (fake kernels of C ops that did
    # not load); only its pure-Python transforms run here
    /tmp/venv-ref/bin/python tests/reference/package_agreement.py package /tmp/ref
    /tmp/venv-ref/bin/python tests/reference/package_agreement.py bpe /tmp/ref
    .venv/bin/python tests/reference/package_agreement.py bpe-prefkit /tmp/ref

What the package side runs: hpsv2's own OpenCLIP ``CLIP`` (strict ``load_state_dict`` of the tiny
checkpoint: prefkit's published layout is OpenCLIP's), its ``image_transform(..., resize_longest_max=True)``
(HPS's ``preprocess_val``) and ``diagonal(image_features @ text_features.T)``; ImageReward's own
``ImageReward`` module (BLIP ViT and med.py BERT; the load reports no missing and no unexpected key) with
its ``_transform`` and ``score(prompt, image)``. Only the sizes are patched to the tiny ones (create_vit,
MLP(768) -> MLP(32), _transform(224) -> _transform(32)) and BLIP's tokenizer reads the tiny vocabulary.

Result (2026-12-03, 6 images of 32x32, 48x32, 64x40, 20x50, 100x100, 37x91 px, so both transforms resize,
pad and crop; 6 prompts, one over 77 tokens): max |prefkit - package| = 1.8e-7 (hps), 6.9e-7 (imagereward).
The ``bpe`` modes: open_clip's ``tokenize`` (the real CLIP BPE, with ftfy) and transformers 5's
CLIPTokenizer built from the same BPE, after prefkit's ``openclip_clean`` (without ftfy) and with
``split_special_tokens``, give the same ids up to the end-of-text token on 11 prompts (curly quotes, HTML
entities, accents, ligatures, full-width letters, a literal <|endoftext|>, 200 words).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

SIZES = [(32, 32), (48, 32), (64, 40), (20, 50), (100, 100), (37, 91)]
PROMPTS = [
    "a cat",
    "a red dog on a blue background",
    "a small green turtle",
    "Two DOGS, sitting!",
    " ".join(["a small green turtle on a red background"] * 6),
    "a dog",
]
BPE_PROMPTS = [
    "a cat",
    "A photo of an astronaut riding a horse on Mars, 4k, highly detailed!!",
    "\u00dcn\u00efc\u00f6d\u00e9 caf\u00e9 \u2014 na\u00efve \u201cquotes\u201d & emoji \U0001f431",
    "  lots   of\twhite\nspace  ",
    "x " * 100,
    "don't stop; it's 3.14 o'clock",
    "<|endoftext|> inside",
    "Tom &amp; Jerry &amp;amp; friends",
    "\u2018single\u2019 and \u201cdouble\u201d quotes",
    "A\u030angstr\u00f6m",
    "\ufb01ne ligature and \uff21\uff22 width",
]


def _images(root: str):
    from PIL import Image

    return [Image.open(f"{root}/img{i}.png").convert("RGB") for i in range(len(SIZES))]


def prefkit_side(root: str) -> None:
    import numpy as np
    from PIL import Image

    from prefkit.judges import JudgeOptions, make_judge

    rng = np.random.RandomState(0)
    for i, (w, h) in enumerate(SIZES):
        img = Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8))
        (Image.new("RGB", (32, 32), (120, 60, 200)) if i == 0 else img).save(f"{root}/img{i}.png")
    out = {}
    for source in ("hps", "imagereward"):
        judge = make_judge(JudgeOptions(source, model=f"{root}/{source}", processor=f"{root}/{source}"))
        out[source] = judge.score(_images(root), PROMPTS)
    Path(f"{root}/prefkit_scores.json").write_text(json.dumps(out, indent=1))


def package_side(root: str) -> None:
    import torch
    from hpsv2.src.open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from hpsv2.src.open_clip.transform import image_transform
    from transformers import BertTokenizer, CLIPTokenizerFast

    ref = json.loads(Path(f"{root}/prefkit_scores.json").read_text())
    images, out = _images(root), {}

    sd = torch.load(f"{root}/hps/HPS_v2.1_compressed.pt", map_location="cpu")["state_dict"]
    model = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=8, image_size=32, patch_size=8),
        text_cfg=CLIPTextCfg(
            context_length=77, vocab_size=sd["token_embedding.weight"].shape[0], width=32, heads=4, layers=2
        ),
        quick_gelu=False,
        output_dict=True,
    )
    model.load_state_dict(sd, strict=True)
    model.eval()
    preprocess_val = image_transform(32, is_train=False, mean=None, std=None, resize_longest_max=True)
    tok = CLIPTokenizerFast.from_pretrained(f"{root}/hps")
    scores = []
    with torch.no_grad():
        for image, prompt in zip(images, PROMPTS, strict=True):
            ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"], tok.eos_token_id]
            if len(ids) > 77:  # open_clip tokenize(): truncate, end-of-text last, zero padding
                ids = [*ids[:76], tok.eos_token_id]
            text = torch.zeros(1, 77, dtype=torch.long)
            text[0, : len(ids)] = torch.tensor(ids)
            o = model(preprocess_val(image).unsqueeze(0), text)
            scores.append(float(torch.diagonal(o["image_features"] @ o["text_features"].T)[0]))
    out["hps"] = scores

    for name in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint", "clip"):
        sys.modules[name] = types.ModuleType(name)  # grad checkpointing / CLIPScore only
    wrapper = types.ModuleType("fairscale.nn.checkpoint.checkpoint_activations")
    wrapper.checkpoint_wrapper = lambda m, *a, **k: m
    sys.modules[wrapper.__name__] = wrapper
    pkg = types.ModuleType("ImageReward")  # without its __init__ (ReFL: diffusers, datasets ...)
    pkg.__path__ = [os.path.dirname(importlib.util.find_spec("ImageReward").origin)]
    sys.modules["ImageReward"] = pkg
    import ImageReward.ImageReward as ir
    import ImageReward.models.BLIP.blip_pretrain as bp
    from ImageReward.models.BLIP.vit import VisionTransformer

    vocab = json.loads(Path(f"{root}/imagereward/tokenizer.json").read_text())["model"]["vocab"]
    with open(f"{root}/vocab.txt", "w") as f:
        f.writelines(p + "\n" for p, _ in sorted(vocab.items(), key=lambda kv: kv[1]))

    def init_tokenizer():  # BLIP's init_tokenizer on the tiny vocabulary
        t = BertTokenizer(f"{root}/vocab.txt", do_lower_case=True)
        t.add_special_tokens({"bos_token": "[DEC]"})
        t.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        t.enc_token_id = t.additional_special_tokens_ids[0]
        return t

    bp.init_tokenizer = init_tokenizer
    bp.create_vit = lambda *a: (
        VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2),
        128,
    )
    mlp = ir.MLP
    ir.MLP = lambda input_size: mlp(32)
    model = ir.ImageReward(med_config=f"{root}/imagereward/med_config.json", device="cpu")
    model.preprocess = ir._transform(32)
    msg = model.load_state_dict(
        torch.load(f"{root}/imagereward/ImageReward.pt", map_location="cpu"), strict=False
    )
    print("ImageReward load: missing", msg.missing_keys, "unexpected", msg.unexpected_keys)
    model.eval()
    with torch.no_grad():
        out["imagereward"] = [model.score(p, im) for im, p in zip(images, PROMPTS, strict=True)]
    for source in ("hps", "imagereward"):
        diff = max(abs(a - b) for a, b in zip(out[source], ref[source], strict=True))
        print(
            f"{source}: package {out[source]}\n{source}: prefkit {ref[source]}\n{source}: max |diff| {diff:.2e}"
        )


def bpe_package(root: str) -> None:
    from hpsv2.src.open_clip.tokenizer import bytes_to_unicode, default_bpe, tokenize

    merges = (
        gzip.decompress(Path(default_bpe()).read_bytes()).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    )
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    Path(f"{root}/clip_vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    Path(f"{root}/clip_merges.txt").write_text("\n".join(merges) + "\n")
    Path(f"{root}/clip_ids.json").write_text(json.dumps({"ids": tokenize(BPE_PROMPTS).tolist()}))


def bpe_prefkit(root: str) -> None:
    from transformers import CLIPTokenizer

    from prefkit.judges.hps import openclip_clean

    vocab = json.loads(Path(f"{root}/clip_vocab.json").read_text())
    merges = [
        tuple(line.split()) for line in Path(f"{root}/clip_merges.txt").read_text().splitlines() if line
    ]
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    got = tok(
        [openclip_clean(p) for p in BPE_PROMPTS],
        padding="max_length",
        truncation=True,
        max_length=77,
        split_special_tokens=True,
    )["input_ids"]
    for prompt, a, b in zip(
        BPE_PROMPTS, got, json.loads(Path(f"{root}/clip_ids.json").read_text())["ids"], strict=True
    ):
        same = a[: a.index(49407) + 1] == b[: b.index(49407) + 1]  # open_clip pads with 0, HF with 49407
        print(f"{prompt[:40]!r}: {'same' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    mode, root = sys.argv[1], sys.argv[2]
    {"prefkit": prefkit_side, "package": package_side, "bpe": bpe_package, "bpe-prefkit": bpe_prefkit}[mode](
        root
    )
