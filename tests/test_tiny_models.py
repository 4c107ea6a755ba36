"""Tiny built-in diffusers models: build, save, load back with the stock loader, run, tokenize."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from prefkit.models import tiny  # noqa: E402
from prefkit.models.parts import rename_into_place  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["tiny-sd15", "tiny-sd3", "tiny-flux"]
ODD_TEXT = "a <script>ünïcode zebra"


def _load(path):
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    pipe = diffusers.DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, name, **kwargs):
    extra = (
        {"true_cfg_scale": 5.0, "negative_prompt": "", "height": 32, "width": 32}
        if name == "tiny-flux"
        else {"guidance_scale": 5.0}  # no height/width: the default must be 32 px
    )
    return pipe(
        "a cat",
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
        **extra,
        **kwargs,
    ).images


def _safetensors(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: Path(tiny.BUILTIN_MODELS[name](root / name, seed=0)) for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_builds_loads_and_runs(built, name):
    folder = built[name]
    assert (folder / "model_index.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temp folder left behind"
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 8 * 2**20

    pipe = _load(folder)
    expected = {
        "tiny-sd15": "StableDiffusionPipeline",
        "tiny-sd3": "StableDiffusion3Pipeline",
        "tiny-flux": "FluxPipeline",
    }
    assert type(pipe).__name__ == expected[name]
    images = _run(pipe, name)
    assert images.shape == (1, 3, 32, 32)
    assert torch.isfinite(images).all()


def test_family_shapes(built):
    sd15, sd3, flux = (_load(built[n]) for n in FAMILIES)
    assert sd15.vae_scale_factor == sd3.vae_scale_factor == flux.vae_scale_factor == 2
    assert sd15.unet.config.sample_size == 16 and sd15.vae.config.latent_channels == 4
    assert sd15.safety_checker is None
    assert sd15.scheduler.config.beta_schedule == "scaled_linear"
    assert sd15.scheduler.config.steps_offset == 1
    assert sd3.transformer.config.sample_size == 16 and sd3.transformer.config.patch_size == 2
    assert sd3.text_encoder_3 is not None and sd3.tokenizer_3 is not None
    assert sd3.scheduler.config.shift == 3.0
    assert flux.transformer.config.in_channels == 4 * flux.vae.config.latent_channels
    assert flux.transformer.config.guidance_embeds is False
    assert flux.scheduler.config.use_dynamic_shifting is True


@pytest.mark.parametrize("name", FAMILIES)
def test_build_is_deterministic(built, tmp_path, name):
    again = Path(tiny.BUILTIN_MODELS[name](tmp_path / "again", seed=0))
    first = _safetensors(built[name])
    assert first and _safetensors(again) == first
    other = Path(tiny.BUILTIN_MODELS[name](tmp_path / "other", seed=1))
    assert _safetensors(other) != first


def test_tokenizers_have_no_unknown_tokens(built):
    from transformers import AutoTokenizer

    animals_file = REPO / "data" / "prompts" / "animals.txt"
    animals = animals_file.read_text().split() if animals_file.is_file() else []
    words = ["a", "photo", "of", "red", "circle", "background", "large", *animals]
    for name in FAMILIES:
        for sub in sorted(p for p in built[name].iterdir() if p.name.startswith("tokenizer")):
            tok = AutoTokenizer.from_pretrained(sub)
            ids = tok(ODD_TEXT).input_ids
            assert tok.unk_token_id not in tok(ODD_TEXT, add_special_tokens=False).input_ids, (name, sub.name)
            assert ids[-1] == tok.eos_token_id
            assert "zebra" in tok.decode(ids)
            for word in words:
                assert len(tok(word, add_special_tokens=False).input_ids) == 1, (name, sub.name, word)
            if type(tok).__name__ == "CLIPTokenizer":  # byte-level BPE: truly any string
                assert tok.model_max_length == 77
                weird = tok("🦓 日本語 \x00\t", add_special_tokens=False).input_ids
                assert weird and tok.unk_token_id not in weird


def test_text_configs_use_tokenizer_ids(built):
    pipe = _load(built["tiny-sd15"])
    cfg = pipe.text_encoder.config
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        pipe.tokenizer.bos_token_id,
        pipe.tokenizer.eos_token_id,
        pipe.tokenizer.pad_token_id,
    )
    assert cfg.vocab_size == len(pipe.tokenizer)


def test_rebuild_replaces_existing_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    assert tiny.main(["tiny-sd15", str(target)]) == 0
    assert (target / "model_index.json").is_file() and not (target / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_publish_keeps_the_winner(tmp_path):
    target, tmp = tmp_path / "model", tmp_path / ".model.tmp"
    target.mkdir()
    (target / "model_index.json").write_text("{}")
    tmp.mkdir()
    (tmp / "model_index.json").write_text('{"loser": 1}')
    rename_into_place(tmp, target, overwrite=False)
    assert (target / "model_index.json").read_text() == "{}"
    assert not tmp.exists()


def test_resolve_builtin(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "cache"))
    assert tiny.resolve_builtin("not-a-model") is None
    assert tiny.resolve_builtin("tiny-sd3-v1") is None

    flux = Path(tiny.resolve_builtin("tiny-flux"))
    assert flux == tmp_path / "cache" / "models" / "tiny-flux-v1"
    assert (flux / "model_index.json").is_file()
    stamp = (flux / "model_index.json").stat().st_mtime_ns
    assert Path(tiny.resolve_builtin("tiny-flux")) == flux  # reused, not rebuilt
    assert (flux / "model_index.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in flux.parent.iterdir()) == ["tiny-flux-v1"]

    sd3 = Path(tiny.resolve_builtin("tiny-sd3"))
    committed = REPO / "data" / "models" / "tiny-sd3"
    if (committed / "model_index.json").is_file():
        assert sd3 == committed
    else:
        assert sd3 == tmp_path / "cache" / "models" / "tiny-sd3-v1"


def test_committed_sd3_matches_builder(tmp_path):
    committed = REPO / "data" / "models" / "tiny-sd3"
    if not (committed / "model_index.json").is_file():
        pytest.skip("data/models/tiny-sd3 not present")
    from safetensors.torch import load_file

    fresh = Path(tiny.build_tiny_sd3(tmp_path / "fresh"))
    files = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(committed)) for p in committed.rglob("*") if p.is_file()) == files
    for rel in (f for f in files if f.endswith(".safetensors")):
        new, old = load_file(fresh / rel), load_file(committed / rel)
        assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in old.items()}, rel
    images = _run(_load(committed), "tiny-sd3")
    assert images.shape == (1, 3, 32, 32)


def test_import_is_light():
    code = "import sys, prefkit.models.tiny; sys.exit(int(any(m in sys.modules for m in ('torch', 'diffusers', 'transformers'))))"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO).returncode == 0


def test_every_family_name_fits_the_schemas():
    """A family is its module: the record schemas accept any family name of that shape, so adding a family
    edits no schema. Every family module's name passes the manifest's and the trajectory's pattern."""
    import json
    import re

    from prefkit.families import families
    from prefkit.resources import schema_dir

    for schema in ("manifest", "trajectory", "eval"):
        text = (schema_dir() / f"{schema}.schema.json").read_text()
        pattern = json.loads(text.split('"family": ', 1)[1].split("}", 1)[0] + "}")["pattern"]
        for cls in set(families().values()):
            assert re.fullmatch(pattern, cls.name), (schema, cls.name)
