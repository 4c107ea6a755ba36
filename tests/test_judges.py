"""Judges for ``prefkit label``: jpeg, PickScore, LAION aesthetic, custom python scorers (offline, CPU).

Every model is a tiny random CLIP built in code (prefkit.models.tiny_clip); each judge is checked against
an independent computation (PIL for jpeg, the raw CLIP sub-modules for PickScore and the aesthetic head).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prefkit.errors import PrefkitError
from prefkit.judges import JudgeOptions, make_judge

PROMPTS = ["a cat", "a red dog on a blue background", "a small green turtle"]


def _images() -> list[Image.Image]:
    rng = np.random.RandomState(0)
    flat = Image.new("RGB", (32, 32), (120, 60, 200))
    noise = Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8))
    grad = Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], (32, 1, 3)))
    return [flat, noise, grad]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> dict[str, str]:
    """{"clip": CLIP folder (projection dim 16), "pth": aesthetic head .pth, "st": same head .safetensors}."""
    from prefkit.models.tiny_clip import build_tiny_aesthetic_mlp, build_tiny_clip

    root = tmp_path_factory.mktemp("judges")
    return {
        "clip": build_tiny_clip(root / "clip", seed=0, projection_dim=16),
        "pth": build_tiny_aesthetic_mlp(root / "aesthetic.pth", in_dim=16, seed=1),
        "st": build_tiny_aesthetic_mlp(root / "aesthetic.safetensors", in_dim=16, seed=1),
    }


def _raw_clip(folder: str):
    from transformers import AutoProcessor, CLIPModel

    return CLIPModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def _manual_image_embeds(model, processor, images) -> torch.Tensor:
    """Projected image features from the sub-modules (not get_image_features), L2-normalised."""
    with torch.no_grad():
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        emb = model.visual_projection(pooled)
    return emb / emb.norm(dim=-1, keepdim=True)


# -- jpeg ---------------------------------------------------------------------------------------------


def _jpeg_kb(image: Image.Image) -> float:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return len(buf.getvalue()) / 1000


def test_jpeg_matches_pil_and_prefers_flat_images():
    images = _images()
    comp = make_judge(JudgeOptions("jpeg"))
    inc = make_judge(JudgeOptions("jpeg", method="incompressibility"))
    expected = [_jpeg_kb(im) for im in images]
    assert comp.score(images, PROMPTS) == [-x for x in expected]
    assert inc.score(images, PROMPTS) == expected
    assert make_judge(JudgeOptions("jpeg", method="compressibility")).score(images, PROMPTS) == [
        -x for x in expected
    ]
    flat, noise, _ = comp.score(images, PROMPTS)
    assert flat > noise  # a flat image compresses better: higher compressibility
    assert comp.info()["method"] == "compressibility" and comp.info()["quality"] == 95
    assert inc.info()["method"] == "incompressibility"
    # numpy HWC uint8 arrays and non-RGB images are scored as their RGB version
    assert comp.score([np.asarray(images[1])], ["x"]) == [-expected[1]]
    assert comp.score([images[1].convert("RGBA")], ["x"]) == [-expected[1]]


def test_jpeg_rejects_unknown_method():
    with pytest.raises(PrefkitError, match="compressibility.*incompressibility"):
        make_judge(JudgeOptions("jpeg", method="vqascore"))


# -- PickScore ------------------------------------------------------------------------------------------


def test_pickscore_matches_manual_clip(tiny_clip):
    folder = tiny_clip["clip"]
    images = _images()
    judge = make_judge(JudgeOptions("pickscore", model=folder, processor=folder, batch_size=2))
    got = judge.score(images, PROMPTS)

    model, processor = _raw_clip(folder)
    img = _manual_image_embeds(model, processor, images)
    expected = []
    with torch.no_grad():
        for i, prompt in enumerate(PROMPTS):  # one prompt at a time: no padding involved
            ids = processor.tokenizer(prompt, return_tensors="pt")
            txt = model.text_projection(model.text_model(**ids).pooler_output)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            expected.append(float(model.logit_scale.exp() * (txt[0] @ img[i])))
    assert got == pytest.approx(expected, abs=1e-5)
    assert len(set(np.round(got, 6))) == 3
    # pointwise: each image is scored with its own prompt, whatever the batch
    one_by_one = [judge.score([im], [p])[0] for im, p in zip(images, PROMPTS, strict=True)]
    assert got == pytest.approx(one_by_one, abs=1e-5)

    info = judge.info()
    assert info["name"] == "pickscore" and info["model"] == folder and info["processor"] == folder
    with pytest.raises(PrefkitError, match="3 images but 2 prompts"):
        judge.score(images, PROMPTS[:2])


def test_pickscore_errors_offline(tiny_clip):
    with pytest.raises(PrefkitError, match="PickScore processor 'laion/CLIP-ViT-H-14"):
        make_judge(JudgeOptions("pickscore"))  # HF_HUB_OFFLINE=1, nothing cached
    folder = tiny_clip["clip"]
    with pytest.raises(PrefkitError, match="--dtype"):
        make_judge(JudgeOptions("pickscore", model=folder, processor=folder, dtype="float64"))
    with pytest.raises(PrefkitError, match="--method"):
        make_judge(JudgeOptions("pickscore", model=folder, processor=folder, method="pairwise"))


# -- LAION aesthetic ------------------------------------------------------------------------------------


def _manual_mlp(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The LAION head by hand: five affine maps (the dropouts are identities at inference)."""
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x.squeeze(-1)


def test_aesthetic_weights_file_layout(tiny_clip):
    state = torch.load(tiny_clip["pth"], weights_only=True)
    assert list(state) == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]
    shapes = [tuple(state[f"layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)]
    assert shapes == [(1024, 16), (128, 1024), (64, 128), (16, 64), (1, 16)]

    from prefkit.judges.clip import aesthetic_mlp

    assert [tuple(v.shape) for v in aesthetic_mlp(768).state_dict().values()][0] == (1024, 768)


def test_aesthetic_matches_manual_mlp(tiny_clip):
    folder = tiny_clip["clip"]
    images = _images()
    judge = make_judge(JudgeOptions("aesthetic", model=folder, weights=tiny_clip["pth"], batch_size=2))
    got = judge.score(images, PROMPTS)

    model, processor = _raw_clip(folder)
    state = torch.load(tiny_clip["pth"], weights_only=True)
    with torch.no_grad():
        expected = _manual_mlp(state, _manual_image_embeds(model, processor, images)).tolist()
    assert got == pytest.approx(expected, abs=1e-5)
    assert len(set(np.round(got, 6))) == 3

    info = judge.info()
    assert info["name"] == "aesthetic" and info["model"] == folder
    assert info["weights"] == "aesthetic.pth"
    assert info["weights_sha256"] == hashlib.sha256(Path(tiny_clip["pth"]).read_bytes()).hexdigest()

    # the same head as .safetensors scores identically
    st = make_judge(JudgeOptions("aesthetic", model=folder, weights=tiny_clip["st"]))
    assert st.score(images, PROMPTS) == pytest.approx(got, abs=1e-6)


def test_aesthetic_errors(tiny_clip, tmp_path):
    folder = tiny_clip["clip"]
    with pytest.raises(PrefkitError, match=r"needs --weights.*sac\+logos\+ava1-l14-linearMSE\.pth"):
        make_judge(JudgeOptions("aesthetic", model=folder))
    with pytest.raises(PrefkitError, match="no such file"):
        make_judge(JudgeOptions("aesthetic", model=folder, weights=str(tmp_path / "missing.pth")))
    # a head for ViT-L/14 (768-d) does not fit a 16-d CLIP
    from prefkit.models.tiny_clip import build_tiny_aesthetic_mlp

    big = build_tiny_aesthetic_mlp(tmp_path / "l14.pth", in_dim=768)
    with pytest.raises(PrefkitError, match="768-d embeddings.*16-d"):
        make_judge(JudgeOptions("aesthetic", model=folder, weights=big))
    # wrong keys
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "wrong.pth")
    with pytest.raises(PrefkitError, match="does not match the LAION aesthetic MLP"):
        make_judge(JudgeOptions("aesthetic", model=folder, weights=str(tmp_path / "wrong.pth")))
    # not a torch file; a pickle that weights_only refuses
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PrefkitError, match="weights_only=True"):
        make_judge(JudgeOptions("aesthetic", model=folder, weights=str(tmp_path / "junk.pth")))
    torch.save({"layers.0.weight": Path("x")}, tmp_path / "pickled.pth")
    with pytest.raises(PrefkitError, match="weights_only=True"):
        make_judge(JudgeOptions("aesthetic", model=folder, weights=str(tmp_path / "pickled.pth")))
    # a bare Sequential state dict (keys "0.weight", ...) is accepted
    state = torch.load(tiny_clip["pth"], weights_only=True)
    torch.save({k.removeprefix("layers."): v for k, v in state.items()}, tmp_path / "bare.pth")
    bare = make_judge(JudgeOptions("aesthetic", model=folder, weights=str(tmp_path / "bare.pth")))
    ref = make_judge(JudgeOptions("aesthetic", model=folder, weights=tiny_clip["pth"]))
    assert bare.score(_images(), PROMPTS) == pytest.approx(ref.score(_images(), PROMPTS), abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_clip_judges_on_cuda_match_cpu(tiny_clip):
    folder, images = tiny_clip["clip"], _images()
    for source, extra in (("pickscore", {"processor": folder}), ("aesthetic", {"weights": tiny_clip["pth"]})):
        cpu = make_judge(JudgeOptions(source, model=folder, **extra)).score(images, PROMPTS)
        gpu = make_judge(JudgeOptions(source, model=folder, device="cuda", **extra)).score(images, PROMPTS)
        assert gpu == pytest.approx(cpu, abs=1e-3)


def test_clip_judge_on_missing_device(tiny_clip):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    folder = tiny_clip["clip"]
    with pytest.raises(PrefkitError, match="--device cuda"):
        make_judge(JudgeOptions("pickscore", model=folder, processor=folder, device="cuda"))


# -- custom python scorers ----------------------------------------------------------------------------------

SCORER_SRC = """
import numpy as np
import torch

CALLS = []

def mean_red(images, prompts):
    CALLS.append((len(images), list(prompts)))
    return [float(np.asarray(im)[..., 0].mean()) for im in images]

def as_array(images, prompts):
    return np.arange(len(images), dtype=np.float32)

def as_tensor(images, prompts):
    return torch.arange(len(images), dtype=torch.float64) * 2

def tensor_items(images, prompts):
    return [torch.tensor(1.5) for _ in images]

def too_few(images, prompts):
    return [1.0] * (len(images) - 1)

def with_nan(images, prompts):
    return [float("nan")] * len(images)

def with_inf(images, prompts):
    return np.full(len(images), np.inf)

def with_text(images, prompts):
    return ["high"] * len(images)

def with_none(images, prompts):
    return None

def as_dict(images, prompts):
    return {i: 1.0 for i in range(len(images))}

def as_matrix(images, prompts):
    return np.zeros((len(images), 1))

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def scorer_dir(tmp_path, monkeypatch):
    """A working directory holding judge_mod_<id>.py, sub/rewards.py and broken modules."""
    name = f"judge_mod_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(SCORER_SRC)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rewards.py").write_text(SCORER_SRC)
    (tmp_path / f"{name}_broken.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / f"{name}_needs.py").write_text("import prefkit_no_such_dependency\n")
    monkeypatch.chdir(tmp_path)
    yield name
    for mod in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[mod]


def test_custom_scorer_module_and_file(scorer_dir):
    images = _images()
    expected = [float(np.asarray(im)[..., 0].mean()) for im in images]
    judge = make_judge(JudgeOptions(f"python:{scorer_dir}:mean_red", batch_size=2))
    assert judge.score(images, PROMPTS) == expected
    calls = sys.modules[scorer_dir].CALLS
    assert calls == [(2, PROMPTS[:2]), (1, PROMPTS[2:])]  # batched, prompts passed along
    info = judge.info()
    assert info["name"] == f"python:{scorer_dir}:mean_red" and info["function"] == "mean_red"
    assert info["file_sha256"] == hashlib.sha256(SCORER_SRC.encode()).hexdigest()

    by_file = make_judge(JudgeOptions("python:sub/rewards.py:mean_red"))
    assert by_file.score(images, PROMPTS) == expected
    assert make_judge(JudgeOptions("python:sub/rewards.py:as_array")).score(images, PROMPTS) == [0, 1, 2]
    assert make_judge(JudgeOptions("python:sub/rewards.py:as_tensor")).score(images, PROMPTS) == [0, 2, 4]
    assert make_judge(JudgeOptions("python:sub/rewards.py:tensor_items")).score(images, PROMPTS) == [1.5] * 3


@pytest.mark.parametrize(
    "source, message",
    [
        ("python:", "expected MODULE:FUNCTION"),
        ("python:just_a_module", "expected MODULE:FUNCTION"),
        ("python:mod:", "expected MODULE:FUNCTION"),
        ("python::fn", "expected MODULE:FUNCTION"),
        ("python:mod:not-a-name", "not a Python function name"),
        ("python:bad module:fn", "neither a module name"),
        ("python:prefkit_no_such_module_xyz:fn", "cannot import module 'prefkit_no_such_module_xyz'"),
        ("python:prefkit_no_such_pkg.sub:fn", "cannot import module 'prefkit_no_such_pkg.sub'"),
        ("python:missing/file.py:fn", "cannot import 'missing/file.py': no such file"),
    ],
)
def test_custom_scorer_bad_specs(source, message, scorer_dir):
    with pytest.raises(PrefkitError, match=message):
        make_judge(JudgeOptions(source))


def test_custom_scorer_import_and_lookup_errors(scorer_dir):
    with pytest.raises(
        PrefkitError, match=f"importing module '{scorer_dir}_broken' failed: RuntimeError: boom"
    ):
        make_judge(JudgeOptions(f"python:{scorer_dir}_broken:fn"))
    with pytest.raises(PrefkitError, match=f"'{scorer_dir}_needs'.*needs 'prefkit_no_such_dependency'"):
        make_judge(JudgeOptions(f"python:{scorer_dir}_needs:fn"))
    with pytest.raises(PrefkitError, match=f"'{scorer_dir}_broken.py' failed: RuntimeError"):
        make_judge(JudgeOptions(f"python:{scorer_dir}_broken.py:fn"))
    with pytest.raises(PrefkitError, match=f"'{scorer_dir}' has no function 'nope'"):
        make_judge(JudgeOptions(f"python:{scorer_dir}:nope"))
    with pytest.raises(PrefkitError, match="is a int, not a function"):
        make_judge(JudgeOptions(f"python:{scorer_dir}:NOT_A_FUNCTION"))


@pytest.mark.parametrize(
    "function, message",
    [
        ("too_few", "returned 2 scores for 3 images"),
        ("with_nan", "score 0 is nan: scores must be finite"),
        ("with_inf", "score 0 is inf"),
        ("with_text", "score 0 is 'high' \\(str\\), not a number"),
        ("with_none", "returned a NoneType"),
        ("as_dict", "returned a dict"),
        ("as_matrix", "shape \\(3, 1\\)"),
    ],
)
def test_custom_scorer_bad_results(function, message, scorer_dir):
    judge = make_judge(JudgeOptions(f"python:{scorer_dir}:{function}"))
    with pytest.raises(PrefkitError, match=message):
        judge.score(_images(), PROMPTS)


# -- dispatch ----------------------------------------------------------------------------------------------


def test_make_judge_dispatch(tiny_clip, scorer_dir):
    from prefkit.judges.clip import AestheticScorer, PickScoreScorer
    from prefkit.judges.custom import CustomScorer
    from prefkit.judges.jpeg import JpegScorer

    folder = tiny_clip["clip"]
    assert isinstance(make_judge(JudgeOptions("jpeg")), JpegScorer)
    assert isinstance(make_judge(JudgeOptions("pickscore", model=folder, processor=folder)), PickScoreScorer)
    assert isinstance(
        make_judge(JudgeOptions("aesthetic", model=folder, weights=tiny_clip["pth"])), AestheticScorer
    )
    assert isinstance(make_judge(JudgeOptions(f"python:{scorer_dir}:mean_red")), CustomScorer)
    with pytest.raises(PrefkitError, match="unknown"):
        make_judge(JudgeOptions("imagereward-v9"))


# -- end to end through the CLI ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tiny_models, tmp_path_factory) -> Path:
    """2 prompts x 3 samples from the tiny SD3, 2 steps."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    out = tmp_path_factory.mktemp("labelled") / "ds"
    args = ["generate", "--out", out, "--model", tiny_models["sd3"], "--prompt", "a cat", "--prompt", "a dog"]
    args += ["--samples-per-prompt", 3, "--steps", 2, "--quiet"]
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def _label_extra(source: str, tiny_clip: dict[str, str], tmp_path: Path) -> list[str]:
    folder = tiny_clip["clip"]
    if source == "pickscore":
        return ["--model", folder, "--processor", folder, "--batch-size", "4"]
    if source == "aesthetic":
        return ["--model", folder, "--weights", tiny_clip["pth"]]
    if source.startswith("python:"):
        (tmp_path / "brightness.py").write_text(
            "import numpy as np\n\ndef score(images, prompts):\n"
            "    return np.array([np.asarray(im, dtype=np.float64).mean() for im in images])\n"
        )
    return []


@pytest.mark.parametrize(
    "source, name",
    [
        ("jpeg", "jpeg"),
        ("pickscore", "pickscore"),
        ("aesthetic", "aesthetic"),
        ("python:brightness.py:score", "score"),
    ],
)
def test_label_cli_end_to_end(source, name, dataset, tiny_clip, cli, tmp_path, monkeypatch):
    from prefkit.label import iter_images
    from prefkit.schemas import validate

    monkeypatch.chdir(tmp_path)
    extra = _label_extra(source, tiny_clip, tmp_path)
    result = cli(["label", dataset, "--source", source, "--quiet", "--overwrite", *extra])
    assert result.exit_code == 0, result.output

    labels = dataset / "labels"
    pairs = [json.loads(line) for line in (labels / f"{name}.jsonl").read_text().splitlines()]
    for i, rec in enumerate(pairs):
        validate(rec, "label", f"{name}.jsonl record {i}")
    assert len(pairs) == 2 * 3  # C(3, 2) pairs in each of the 2 prompt groups
    scores = [json.loads(line) for line in (labels / f"{name}.scores.jsonl").read_text().splitlines()]
    for rec in scores:
        validate(rec, "score", f"{name}.scores.jsonl")
    images = {key: (image, prompt) for key, image, prompt in iter_images(dataset)}
    assert sorted(r["key"] for r in scores) == sorted(images)  # one score per sample
    assert all(math.isfinite(r["score"]) for r in scores)
    by_key = {r["key"]: r["score"] for r in scores}
    for rec in pairs:
        assert rec["judge"]["score_0"] == by_key[rec["key_0"]]
        s0, s1 = by_key[rec["key_0"]], by_key[rec["key_1"]]
        assert rec["label_0"] == (0.5 if s0 == s1 else 1.0 if s0 > s1 else 0.0)
    meta = json.loads((labels / f"{name}.meta.json").read_text())
    assert meta["source"] == source and meta["counts"]["scored_samples"] == 6

    # the stored scores are the judge's scores of the stored images
    judge = make_judge(JudgeOptions(source, **_options_of(extra)))
    keys = sorted(images)
    direct = judge.score([images[k][0] for k in keys], [images[k][1] for k in keys])
    assert [by_key[k] for k in keys] == pytest.approx(direct, abs=1e-5)


def _options_of(extra: list[str]) -> dict[str, object]:
    opts: dict[str, object] = {}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        key = flag.removeprefix("--").replace("-", "_")
        opts[key] = int(value) if key == "batch_size" else value
    return opts
