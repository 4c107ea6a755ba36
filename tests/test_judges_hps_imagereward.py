"""The HPSv2.1 and ImageReward judges (offline, CPU), on tiny random models in the published formats.

prefkit.models.tiny_rewards draws the weights directly in the authors' layouts (OpenCLIP keys in
``{"state_dict": ...}`` for HPS, ImageReward's ``blip.*`` / ``mlp.*`` keys); the scorers rename them into
transformers modules. Each scorer is checked against a forward pass written here from those files alone,
in the authors' semantics (OpenCLIP: ``nn.MultiheadAttention`` with the packed ``in_proj_weight``, the
causal text mask, the end-of-text feature at ``argmax(ids)``; BLIP: timm's fused-qkv ViT with LayerNorm
eps 1e-6, med.py's BERT with its ``(1 - mask) * -10000`` attention mask and cross-attention to every image
token), so a wrong key mapping, head split, norm or pooling shows as a different score.
Tolerance 1e-5 on scores of order 1: both sides run in float32 with different kernels (fused SDPA or
eager attention, split or packed projections), which reorders sums (~1e-7 relative per op over a few
layers); a real mistake moves scores by ~1e-2 or more (the scores of different images differ by > 0.05).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from prefkit.errors import PrefkitError
from prefkit.judges import JudgeOptions, make_judge

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a cat", "a red dog on a blue background", "a small green turtle"]
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def _images() -> list[Image.Image]:
    """Three 32 px images: the tiny judges' input size, so neither transform resizes or crops."""
    rng = np.random.RandomState(0)
    flat = Image.new("RGB", (32, 32), (120, 60, 200))
    noise = Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8))
    grad = Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], (32, 1, 3)))
    return [flat, noise, grad]


def _normalised(images: list[Image.Image]) -> torch.Tensor:
    """ToTensor + CLIP Normalize, by hand."""
    arr = np.stack([(np.asarray(im, dtype=np.float32) / 255.0 - MEAN) / STD for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    from prefkit.models.tiny_rewards import build_tiny_hps, build_tiny_imagereward

    root = tmp_path_factory.mktemp("rewards")
    return {"hps": build_tiny_hps(root / "hps"), "imagereward": build_tiny_imagereward(root / "imagereward")}


def _ln(x, sd, prefix, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def _lin(x, sd, prefix):
    return F.linear(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])


# -- HPSv2.1: OpenCLIP by hand ------------------------------------------------------------------------------


def _openclip_block(x, sd, prefix, heads, mask=None):
    """OpenCLIP's ResidualAttentionBlock: x + attn(ln_1(x)); x + mlp(ln_2(x)), with nn.MultiheadAttention."""
    width = x.shape[-1]
    mha = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    mha.load_state_dict(
        {
            "in_proj_weight": sd[f"{prefix}.attn.in_proj_weight"],
            "in_proj_bias": sd[f"{prefix}.attn.in_proj_bias"],
            "out_proj.weight": sd[f"{prefix}.attn.out_proj.weight"],
            "out_proj.bias": sd[f"{prefix}.attn.out_proj.bias"],
        }
    )
    h = _ln(x, sd, f"{prefix}.ln_1", 1e-5)
    x = x + mha.eval()(h, h, h, need_weights=False, attn_mask=mask)[0]
    h = _ln(x, sd, f"{prefix}.ln_2", 1e-5)
    return x + _lin(F.gelu(_lin(h, sd, f"{prefix}.mlp.c_fc")), sd, f"{prefix}.mlp.c_proj")


def _openclip_scores(sd, pixels, ids, heads=4, layers=2):
    """HPSv2's score: cos(encode_image, encode_text), OpenCLIP's CLIP.forward with normalize=True."""
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _ln(x, sd, "visual.ln_pre", 1e-5)
    for i in range(layers):
        x = _openclip_block(x, sd, f"visual.transformer.resblocks.{i}", heads)
    image = _ln(x[:, 0], sd, "visual.ln_post", 1e-5) @ sd["visual.proj"]

    n = ids.shape[1]
    causal = torch.full((n, n), float("-inf")).triu_(1)  # OpenCLIP's build_attention_mask
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:n]
    for i in range(layers):
        t = _openclip_block(t, sd, f"transformer.resblocks.{i}", heads, causal)
    t = _ln(t, sd, "ln_final", 1e-5)
    text = t[torch.arange(t.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]
    return F.cosine_similarity(image, text, dim=-1)


def _hps_state(folder: str) -> dict[str, torch.Tensor]:
    ckpt = torch.load(Path(folder) / "HPS_v2.1_compressed.pt", weights_only=True)
    return {k: v.float() for k, v in ckpt["state_dict"].items()}


def _clip_ids(folder: str, prompts: list[str]) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")[
        "input_ids"
    ]


def test_hps_checkpoint_is_in_openclip_layout(tiny):
    ckpt = torch.load(Path(tiny["hps"]) / "HPS_v2.1_compressed.pt", weights_only=True)
    assert list(ckpt) == ["state_dict"]
    sd = ckpt["state_dict"]
    assert {v.dtype for v in sd.values()} == {torch.float16}
    assert tuple(sd["visual.conv1.weight"].shape) == (32, 3, 8, 8) and "visual.conv1.bias" not in sd
    assert tuple(sd["transformer.resblocks.0.attn.in_proj_weight"].shape) == (96, 32)
    assert tuple(sd["text_projection"].shape) == (32, 16) and tuple(sd["visual.proj"].shape) == (32, 16)


def test_hps_matches_openclip_by_hand(tiny):
    folder = tiny["hps"]
    images = _images()
    judge = make_judge(JudgeOptions("hps", model=folder, processor=folder, batch_size=2))
    got = judge.score(images, PROMPTS)
    with torch.no_grad():
        expected = _openclip_scores(_hps_state(folder), _normalised(images), _clip_ids(folder, PROMPTS))
    assert got == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(-1.0 <= s <= 1.0 for s in got) and min(abs(a - b) for a in got for b in got if a != b) > 0.05
    # the same image under another prompt scores differently (the text tower is used)
    other = judge.score(images[:1], PROMPTS[1:2])
    assert other[0] != pytest.approx(got[0], abs=1e-3)

    info = judge.info()
    assert info["name"] == "hps" and info["model"] == folder and info["revision"] is None
    assert info["processor"] == folder and info["weights"] == "HPS_v2.1_compressed.pt"
    digest = hashlib.sha256((Path(folder) / "HPS_v2.1_compressed.pt").read_bytes()).hexdigest()
    assert info["weights_sha256"] == digest


def test_hps_prompts_are_cleaned_and_tokenised_as_openclip_does(tiny):
    """OpenCLIP's basic_clean (ftfy, or its quote / ligature / width fixes without it; HTML unescaped
    twice; whitespace collapsed), and a literal "<|endoftext|>" read as text, not as the end token."""
    from prefkit.judges.hps import openclip_clean

    assert openclip_clean("  Tom &amp;amp; Jerry\n\t ok ") == "Tom & Jerry ok"
    assert openclip_clean("\u201ca cat\u2019s hat\u201d") == '"a cat\'s hat"'
    assert openclip_clean("\ufb01ne \uff21\uff22") == "fine AB"
    folder = tiny["hps"]
    judge = make_judge(JudgeOptions("hps", model=folder, processor=folder))
    image = _images()[:1]
    plain = judge.score(image, ["a cat"])[0]
    assert judge.score(image, ["  A   CAT "]) == [plain]  # lower case, whitespace collapsed
    # were the literal string the end token, the feature would be read at the same position as for "a cat"
    assert judge.score(image, ["a cat <|endoftext|>"])[0] != pytest.approx(plain, abs=1e-4)


def test_hps_preprocessing_resizes_the_longest_side_and_pads_black():
    """HPSv2's ResizeMaxSize: a 64 x 32 image (w x h) halves to 32 x 16 and gets 8 black rows above and
    below; the left and right halves keep their colours away from the seam (bicubic weights sum to 1)."""
    from prefkit.judges.hps import hps_pixels

    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:] = (0, 0, 255)
    x = hps_pixels([Image.fromarray(arr)], 32)[0].numpy().transpose(1, 2, 0)
    black = -MEAN / STD
    red, blue = (np.array([1, 0, 0]) - MEAN) / STD, (np.array([0, 0, 1]) - MEAN) / STD
    np.testing.assert_allclose(x[:8], np.broadcast_to(black, (8, 32, 3)), atol=1e-6)
    np.testing.assert_allclose(x[24:], np.broadcast_to(black, (8, 32, 3)), atol=1e-6)
    np.testing.assert_allclose(x[8:24, :13], np.broadcast_to(red, (16, 13, 3)), atol=1e-5)
    np.testing.assert_allclose(x[8:24, 19:], np.broadcast_to(blue, (16, 13, 3)), atol=1e-5)
    # 45 x 64 (w x h): scale 0.5, width round(22.5) = 22 (Python's round, as hpsv2), 10 columns of padding
    tall = hps_pixels([Image.new("RGB", (45, 64), (0, 255, 0))], 32)[0].numpy().transpose(1, 2, 0)
    green = (np.array([0, 1, 0]) - MEAN) / STD
    np.testing.assert_allclose(tall[:, :5], np.broadcast_to(black, (32, 5, 3)), atol=1e-6)
    np.testing.assert_allclose(tall[:, 5:27], np.broadcast_to(green, (32, 22, 3)), atol=1e-5)
    np.testing.assert_allclose(tall[:, 27:], np.broadcast_to(black, (32, 5, 3)), atol=1e-6)
    # a square image at the model size is only normalised; RGBA and greyscale become RGB
    img = _images()[1]
    assert torch.allclose(hps_pixels([img], 32), _normalised([img]), atol=1e-6)
    assert hps_pixels([img.convert("RGBA"), img.convert("L")], 32).shape == (2, 3, 32, 32)


def test_hps_loads_by_weights_file_and_by_hub_id_from_the_cache(tiny, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    folder, images = tiny["hps"], _images()
    ref = make_judge(JudgeOptions("hps", model=folder, processor=folder)).score(images, PROMPTS)
    # --weights FILE (and the .pt as --judge-model) instead of a folder
    ckpt = str(Path(folder) / "HPS_v2.1_compressed.pt")
    by_file = make_judge(JudgeOptions("hps", weights=ckpt, processor=folder))
    assert by_file.score(images, PROMPTS) == pytest.approx(ref, abs=1e-6)
    assert by_file.info()["model"] is None and by_file.info()["weights"] == "HPS_v2.1_compressed.pt"
    assert make_judge(JudgeOptions("hps", model=ckpt, processor=folder)).score(images, PROMPTS) == ref
    # a Hub id at a revision, served from a Hugging Face cache laid out as hf_hub_download leaves it
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "models--acme--hps-tiny" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "HPS_v2.1_compressed.pt").write_bytes(Path(ckpt).read_bytes())
    (tmp_path / "hub" / "models--acme--hps-tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--hps-tiny" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    by_id = make_judge(JudgeOptions("hps", model="acme/hps-tiny", revision="main", processor=folder))
    assert by_id.score(images, PROMPTS) == ref
    assert by_id.info()["model"] == "acme/hps-tiny" and by_id.info()["revision"] == "main"
    # not in the cache, offline: a prefkit error naming the file and what to pass instead
    with pytest.raises(
        PrefkitError, match=r"cannot get HPS_v2\.1_compressed\.pt of the Hub repository 'acme/nope'"
    ):
        make_judge(JudgeOptions("hps", model="acme/nope", processor=folder))


def test_hps_errors(tiny, tmp_path):
    folder = tiny["hps"]
    with pytest.raises(PrefkitError, match="the folder has no HPS_v2.1_compressed.pt"):
        make_judge(JudgeOptions("hps", model=str(tmp_path), processor=folder))
    with pytest.raises(PrefkitError, match="--weights .*no such file"):
        make_judge(JudgeOptions("hps", weights=str(tmp_path / "missing.pt"), processor=folder))
    with pytest.raises(PrefkitError, match="neither a local folder or file nor a Hub repository id"):
        make_judge(JudgeOptions("hps", model="not a repo", processor=folder))
    with pytest.raises(PrefkitError, match="--method"):
        make_judge(JudgeOptions("hps", model=folder, processor=folder, method="pairwise"))
    # an ImageReward checkpoint is not an OpenCLIP state dict
    with pytest.raises(PrefkitError, match="not an OpenCLIP ViT CLIP state dict"):
        make_judge(
            JudgeOptions("hps", weights=str(Path(tiny["imagereward"]) / "ImageReward.pt"), processor=folder)
        )
    # a checkpoint of another width does not fit the config
    sd = _hps_state(folder)
    sd["visual.proj"] = torch.zeros(32, 8)
    torch.save({"state_dict": sd}, tmp_path / "narrow.pt")
    with pytest.raises(PrefkitError, match="does not fit the model"):
        make_judge(JudgeOptions("hps", weights=str(tmp_path / "narrow.pt"), processor=folder))
    # the processor must be a CLIP config
    with pytest.raises(PrefkitError, match="not a CLIP config"):
        make_judge(JudgeOptions("hps", model=folder, processor=_bert_folder(tiny)))


def _bert_folder(tiny) -> str:
    """A folder with a config that is not CLIP's: the tiny ImageReward's tokenizer plus a BERT config."""
    from transformers import BertConfig

    folder = Path(tiny["imagereward"]).parent / "bert-config"
    if not folder.exists():
        folder.mkdir()
        BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
            folder
        )
    return str(folder)


# -- ImageReward: BLIP by hand --------------------------------------------------------------------------------


def _vit(sd, pixels, prefix="blip.visual_encoder"):
    """BLIP's vit.py VisionTransformer: patch conv, cls + pos, pre-norm blocks (fused qkv), final norm."""
    patch = sd[f"{prefix}.patch_embed.proj.weight"]
    x = F.conv2d(pixels, patch, sd[f"{prefix}.patch_embed.proj.bias"], stride=patch.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[f"{prefix}.cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + sd[f"{prefix}.pos_embed"][:, : x.shape[1]]
    B, N, C = x.shape
    heads = C // 64
    i = 0
    while f"{prefix}.blocks.{i}.norm1.weight" in sd:
        b = f"{prefix}.blocks.{i}"
        h = _ln(x, sd, f"{b}.norm1", 1e-6)
        qkv = _lin(h, sd, f"{b}.attn.qkv").reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
        x = x + _lin((attn @ qkv[2]).transpose(1, 2).reshape(B, N, C), sd, f"{b}.attn.proj")
        x = x + _lin(F.gelu(_lin(_ln(x, sd, f"{b}.norm2", 1e-6), sd, f"{b}.mlp.fc1")), sd, f"{b}.mlp.fc2")
        i += 1
    return _ln(x, sd, f"{prefix}.norm", 1e-6)


def _bert_attention(x, kv, sd, prefix, heads, ext_mask):
    """med.py BertAttention: scaled dot product over heads, + the extended mask, dense, residual, LayerNorm."""
    B, L, H = x.shape
    d = H // heads

    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, d).permute(0, 2, 1, 3)

    q, k, v = (
        split(_lin(src, sd, f"{prefix}.self.{n}")) for src, n in ((x, "query"), (kv, "key"), (kv, "value"))
    )
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if ext_mask is not None:
        scores = scores + ext_mask
    ctx = (scores.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(B, L, H)
    return _ln(_lin(ctx, sd, f"{prefix}.output.dense") + x, sd, f"{prefix}.output.LayerNorm", 1e-12)


def _imagereward_scores(sd, med, pixels, ids, mask):
    """ImageReward.score: BLIP text encoder over the ViT tokens, MLP on [CLS], (r - mean) / std."""
    image = _vit(sd, pixels)
    p = "blip.text_encoder"
    x = (
        sd[f"{p}.embeddings.word_embeddings.weight"][ids]
        + sd[f"{p}.embeddings.position_embeddings.weight"][: ids.shape[1]]
    )
    x = _ln(x, sd, f"{p}.embeddings.LayerNorm", 1e-12)
    ext = (1.0 - mask[:, None, None, :].float()) * -10000.0  # med.py get_extended_attention_mask
    heads = int(med["num_attention_heads"])
    for i in range(int(med["num_hidden_layers"])):
        layer = f"{p}.encoder.layer.{i}"
        x = _bert_attention(x, x, sd, f"{layer}.attention", heads, ext)
        x = _bert_attention(x, image, sd, f"{layer}.crossattention", heads, None)  # image mask: all ones
        inner = F.gelu(_lin(x, sd, f"{layer}.intermediate.dense"))
        x = _ln(_lin(inner, sd, f"{layer}.output.dense") + x, sd, f"{layer}.output.LayerNorm", 1e-12)
    r = x[:, 0]
    for i in (0, 2, 4, 6, 7):  # MLP(768): five linears, dropouts off, no activations
        r = _lin(r, sd, f"mlp.layers.{i}")
    return (r.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072


def _bert_tokens(folder: str, prompts: list[str]):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    out = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


def test_imagereward_checkpoint_is_in_blip_layout(tiny):
    sd = torch.load(Path(tiny["imagereward"]) / "ImageReward.pt", weights_only=True)
    assert tuple(sd["blip.visual_encoder.blocks.0.attn.qkv.weight"].shape) == (384, 128)
    assert tuple(sd["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"].shape) == (32, 128)
    assert [tuple(sd[f"mlp.layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)] == [
        (1024, 32),
        (128, 1024),
        (64, 128),
        (16, 64),
        (1, 16),
    ]
    assert "blip.vision_proj.weight" in sd and "blip.text_encoder.embeddings.position_ids" in sd


def test_imagereward_matches_blip_by_hand(tiny):
    folder = tiny["imagereward"]
    images = _images()
    prompts = [*PROMPTS[:2], " ".join(["a small green turtle on a red background"] * 6)]  # > 35 tokens
    judge = make_judge(JudgeOptions("imagereward", model=folder, processor=folder, batch_size=2))
    got = judge.score(images, prompts)
    sd = torch.load(Path(folder) / "ImageReward.pt", weights_only=True)
    med = json.loads((Path(folder) / "med_config.json").read_text())
    ids, mask = _bert_tokens(folder, prompts)
    assert ids.shape == (3, 35) and int(mask[2].sum()) == 35 and int(mask[0].sum()) == 4  # [CLS] a cat [SEP]
    with torch.no_grad():
        expected = _imagereward_scores(sd, med, _normalised(images), ids, mask)
    assert got == pytest.approx(expected.tolist(), abs=1e-5)
    assert min(abs(a - b) for a in got for b in got if a != b) > 0.05
    other = judge.score(images[:1], prompts[1:2])  # the prompt matters (cross-attention path)
    assert other[0] != pytest.approx(got[0], abs=1e-3)

    # too small to move a score on these weights, so checked directly: BLIP's ViT LayerNorm eps 1e-6, 64-d heads
    vcfg, tcfg = judge.model.vision.config, judge.model.text.config
    assert vcfg.layer_norm_eps == 1e-6 and vcfg.num_attention_heads == 2 and vcfg.image_size == 32
    assert tcfg.layer_norm_eps == 1e-12 and tcfg.encoder_hidden_size == 128

    info = judge.info()
    assert info["name"] == "imagereward" and info["model"] == folder and info["weights"] == "ImageReward.pt"
    assert info["med_config"] == "med_config.json" and info["revision"] is None
    digest = hashlib.sha256((Path(folder) / "ImageReward.pt").read_bytes()).hexdigest()
    assert info["weights_sha256"] == digest


def test_imagereward_tokens_are_blip_s(tiny):
    """[CLS] first (not [ENC]), [SEP], [PAD] to 35; [DEC] and [ENC] added after the base vocabulary."""
    folder = tiny["imagereward"]
    judge = make_judge(JudgeOptions("imagereward", model=folder, processor=folder))
    vocab = json.loads((Path(folder) / "tokenizer.json").read_text())["model"]["vocab"]
    ids = judge.tokenizer(["A cat"], padding="max_length", truncation=True, max_length=35)["input_ids"][0]
    assert ids == [vocab["[CLS]"], vocab["a"], vocab["cat"], vocab["[SEP]"]] + [vocab["[PAD]"]] * 31
    assert judge.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(vocab), len(vocab) + 1]


def test_imagereward_preprocessing_resizes_the_shorter_side_and_centre_crops():
    from prefkit.judges.imagereward import ir_pixels

    # 64 x 32 (w x h): no resize (shorter side 32); crop columns round((64 - 32) / 2) = 16 .. 47
    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, :24] = (255, 0, 0)
    arr[:, 24:] = (0, 0, 255)
    x = ir_pixels([Image.fromarray(arr)], 32)[0].numpy().transpose(1, 2, 0)
    red, blue = (np.array([1, 0, 0]) - MEAN) / STD, (np.array([0, 0, 1]) - MEAN) / STD
    np.testing.assert_allclose(x[:, :8], np.broadcast_to(red, (32, 8, 3)), atol=1e-6)
    np.testing.assert_allclose(x[:, 8:], np.broadcast_to(blue, (32, 24, 3)), atol=1e-6)
    # 48 x 96 (w x h): shorter side to 32, longer to int(32 * 96 / 48) = 64, rows 16 .. 47 kept
    arr = np.zeros((96, 48, 3), dtype=np.uint8)
    arr[:40] = (255, 0, 0)
    arr[40:] = (0, 0, 255)
    y = ir_pixels([Image.fromarray(arr)], 32)[0].numpy().transpose(1, 2, 0)
    expected = Image.fromarray(arr).resize((32, 64), Image.BICUBIC).crop((0, 16, 32, 48))
    np.testing.assert_allclose(y, _normalised([expected])[0].numpy().transpose(1, 2, 0), atol=1e-6)
    np.testing.assert_allclose(y[:8], np.broadcast_to(red, (8, 32, 3)), atol=1e-6)  # rows 16..23 of 64: red
    img = _images()[2]
    assert torch.allclose(ir_pixels([img], 32), _normalised([img]), atol=1e-6)


def test_imagereward_loads_by_weights_file(tiny, tmp_path):
    folder, images = tiny["imagereward"], _images()
    ref = make_judge(JudgeOptions("imagereward", model=folder, processor=folder)).score(images, PROMPTS)
    # --weights beside its med_config.json
    by_file = make_judge(
        JudgeOptions("imagereward", weights=str(Path(folder) / "ImageReward.pt"), processor=folder)
    )
    assert by_file.score(images, PROMPTS) == ref and by_file.info()["model"] is None
    # a lone checkpoint file falls back to BLIP's med_config.json: BERT-base, which these weights do not fit
    lone = tmp_path / "ImageReward.pt"
    lone.write_bytes((Path(folder) / "ImageReward.pt").read_bytes())
    with pytest.raises(PrefkitError, match="does not fit the model"):
        make_judge(JudgeOptions("imagereward", weights=str(lone), processor=folder))


def test_imagereward_errors(tiny, tmp_path):
    folder = tiny["imagereward"]
    with pytest.raises(PrefkitError, match="the folder has no ImageReward.pt"):
        make_judge(JudgeOptions("imagereward", model=str(tmp_path), processor=folder))
    hps_ckpt = str(Path(tiny["hps"]) / "HPS_v2.1_compressed.pt")
    with pytest.raises(PrefkitError, match="not ImageReward's state dict.*unexpected keys"):
        make_judge(JudgeOptions("imagereward", weights=hps_ckpt, processor=folder))
    sd = torch.load(Path(folder) / "ImageReward.pt", weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("mlp.")}, tmp_path / "headless.pt")
    with pytest.raises(PrefkitError, match="no MLP weights"):
        make_judge(JudgeOptions("imagereward", weights=str(tmp_path / "headless.pt"), processor=folder))
    with pytest.raises(PrefkitError, match="--method"):
        make_judge(JudgeOptions("imagereward", model=folder, processor=folder, method="vqascore"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "ImageReward.pt").write_bytes((Path(folder) / "ImageReward.pt").read_bytes())
    (tmp_path / "cfg" / "med_config.json").write_text("[1, 2]")
    with pytest.raises(PrefkitError, match="not a JSON object"):
        make_judge(JudgeOptions("imagereward", model=str(tmp_path / "cfg"), processor=folder))


# -- end to end: prefkit label, then prefkit train --objective ddpo on the scores ------------------------------


@pytest.fixture(scope="module")
def dataset(tiny_models, tmp_path_factory) -> Path:
    from conftest import two_prompt_dataset

    return two_prompt_dataset(tmp_path_factory.mktemp("hps-ir") / "ds", tiny_models["sd3"])


@pytest.mark.parametrize("source", ["hps", "imagereward"])
def test_label_cli_end_to_end(source, dataset, tiny, cli):
    from prefkit.label import iter_images
    from prefkit.schemas import validate

    folder = tiny[source]
    result = cli(
        ["label", dataset, "--source", source, "--judge-model", folder, "--processor", folder]
        + ["--batch-size", "4", "--quiet", "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    labels = dataset / "labels"
    pairs = [json.loads(line) for line in (labels / f"{source}.jsonl").read_text().splitlines()]
    for i, rec in enumerate(pairs):
        validate(rec, "label", f"{source}.jsonl record {i}")
    assert len(pairs) == 2 * 3  # C(3, 2) pairs in each of the 2 prompt groups
    scores = [json.loads(line) for line in (labels / f"{source}.scores.jsonl").read_text().splitlines()]
    for rec in scores:
        validate(rec, "score", f"{source}.scores.jsonl")
    images = {key: (image, prompt) for key, image, prompt in iter_images(dataset)}
    assert sorted(r["key"] for r in scores) == sorted(images)
    by_key = {r["key"]: r["score"] for r in scores}
    assert all(math.isfinite(s) for s in by_key.values()) and len(set(by_key.values())) == 6
    for rec in pairs:
        s0, s1 = by_key[rec["key_0"]], by_key[rec["key_1"]]
        assert rec["label_0"] == (0.5 if s0 == s1 else 1.0 if s0 > s1 else 0.0)
    meta = json.loads((labels / f"{source}.meta.json").read_text())
    validate(meta, "labelset", f"{source}.meta.json")
    judge_info = meta["judge"]
    ckpt = Path(folder) / ("HPS_v2.1_compressed.pt" if source == "hps" else "ImageReward.pt")
    assert (
        judge_info["model"] == folder
        and judge_info["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    )
    # the stored scores are the judge's scores of the stored (SD3-sized, so resized) images
    judge = make_judge(JudgeOptions(source, model=folder, processor=folder))
    keys = sorted(images)
    direct = judge.score([images[k][0] for k in keys], [images[k][1] for k in keys])
    assert [by_key[k] for k in keys] == pytest.approx(direct, abs=1e-5)


def test_ddpo_trains_on_imagereward_scores(dataset, tiny, cli, tmp_path):
    """One `prefkit train --objective ddpo` on the ImageReward scores: two steps, finite loss, a LoRA."""
    folder = tiny["imagereward"]
    res = cli(
        ["label", dataset, "--source", "imagereward", "--judge-model", folder, "--processor", folder]
        + ["--name", "ir-ddpo", "--quiet", "--overwrite"]
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    res = cli(
        ["train", dataset, "--out", out, "--objective", "ddpo", "--labels", "ir-ddpo"]
        + ["--max-steps", "2", "--batch-size", "2", "--checkpoint-every", "0", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(math.isfinite(m["loss"]) for m in metrics)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "ddpo" and summary["labels"]["samples"] == 6
    assert (out / "lora").is_dir()
