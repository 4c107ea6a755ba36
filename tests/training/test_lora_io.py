"""The LoRA that `prefkit train` saves loads into a fresh pipeline with `load_lora_weights` and
reproduces the trained policy exactly, for every family (every adapter weight loaded, none skipped)."""

from __future__ import annotations

import warnings

import pytest
import torch

from prefkit.families import family_of, load_pipeline
from prefkit.sampling import SamplerSettings, sample
from prefkit.training.config import TrainConfig
from prefkit.training.lora import add_lora, save_lora


@pytest.mark.parametrize("family", ["ddim", "sd3", "flux"])
def test_saved_lora_reproduces_the_policy(tiny_models, family, tmp_path):
    pipe = load_pipeline(tiny_models[family])
    fam = family_of(pipe)
    torch.manual_seed(0)
    add_lora(fam.denoiser, TrainConfig(lora_rank=4, lora_alpha=4.0), fam)
    with torch.no_grad():  # a trained-looking adapter: B matrices away from their zero init
        for name, p in fam.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    st = SamplerSettings(steps=3, guidance=5.0, noise=1.0 if family == "ddim" else 0.7, height=32, width=32)
    policy = sample(fam, ["a red circle"], [1], st).latents
    base = sample(family_of(load_pipeline(tiny_models[family])), ["a red circle"], [1], st).latents
    assert (policy - base).abs().max() > 1e-2  # the adapter matters

    save_lora(pipe, fam.denoiser, tmp_path)
    fresh = load_pipeline(tiny_models[family])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # peft warns when adapter weights are left out
        fresh.load_lora_weights(str(tmp_path))
    loaded = sample(family_of(fresh), ["a red circle"], [1], st).latents
    assert torch.equal(loaded, policy)


def test_generate_with_lora_samples_the_tuned_policy(tiny_models, cli, tmp_path):
    """`prefkit generate --lora` writes the tuned policy's chain and log-probs (what DDPO's rounds and
    `prefkit eval` sample), records the LoRA's absolute path, and regenerate() reproduces a sample."""
    import json

    import numpy as np

    from prefkit.generate import regenerate
    from prefkit.shards import iter_samples

    pipe = load_pipeline(tiny_models["sd3"])
    fam = family_of(pipe)
    torch.manual_seed(0)
    add_lora(fam.denoiser, TrainConfig(lora_rank=4, lora_alpha=4.0), fam)
    with torch.no_grad():
        for name, p in fam.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    save_lora(pipe, fam.denoiser, tmp_path / "lora")
    common = ["--model", tiny_models["sd3"], "--prompt", "a red circle", "--samples-per-prompt", "2"]
    common += ["--steps", "3", "--quiet"]
    r = cli(["generate", "--out", str(tmp_path / "base"), *common])
    assert r.exit_code == 0, r.output
    r = cli(["generate", "--out", str(tmp_path / "tuned"), "--lora", str(tmp_path / "lora"), *common])
    assert r.exit_code == 0, r.output
    base = {s["__key__"]: s for s in iter_samples(tmp_path / "base")}
    tuned = {s["__key__"]: s for s in iter_samples(tmp_path / "tuned")}
    assert base.keys() == tuned.keys()
    key = sorted(tuned)[0]
    assert not np.array_equal(base[key]["logprobs"], tuned[key]["logprobs"])
    manifest = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    assert manifest["settings"]["lora"] == str((tmp_path / "lora").resolve())
    # same seeds: the same starting noise, then the adapter changes every step
    assert np.array_equal(tuned[key]["latents"][0], base[key]["latents"][0])
    assert np.abs(tuned[key]["latents"][-1].astype(np.float32) - base[key]["latents"][-1]).max() > 1e-2
    latents, logprobs, _ = regenerate(tmp_path / "tuned", key)
    assert np.array_equal(latents.numpy(), tuned[key]["latents"])
    assert np.array_equal(logprobs.numpy(), tuned[key]["logprobs"])


def test_generate_lora_bad_folder(tiny_models, cli, tmp_path):
    args = ["generate", "--out", tmp_path / "x", "--model", tiny_models["sd3"], "--prompt", "a"]
    r = cli([*args, "--lora", tmp_path / "nowhere", "--quiet"])
    assert r.exit_code == 2
    assert "no pytorch_lora_weights.safetensors" in r.output and "nowhere" in r.output
    assert not (tmp_path / "x").exists()
