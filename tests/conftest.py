"""Shared fixtures: tiny pipelines built in code (offline) once per test session."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that tried to download would fail loudly
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a fresh `datasets` cache per test session (read when datasets is imported): a cache left by an earlier
# session must never answer a load_dataset of this one, and the user's cache stays untouched
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="prefkit-tests-datasets-")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Built-in models built on first use go to a per-session cache, never the user's."""
    os.environ["PREFKIT_CACHE"] = str(tmp_path_factory.mktemp("prefkit-cache"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a
    small shared CPU, torch's thread pool oversubscribed by other processes makes a tiny forward pass
    ~10x slower. Invariance runs compare within one setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fresh_accelerator():
    """accelerate keeps one AcceleratorState per process, fixed by the first Accelerator's mixed precision:
    forget it around a test, so that float32 and bfloat16 training runs can share one pytest process."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """{"ddim": sd15 folder, "sd3": folder, "flux": folder}: diffusers folders saved with save_pretrained."""
    from prefkit.models.tiny import build_tiny_flux, build_tiny_sd3, build_tiny_sd15

    root = tmp_path_factory.mktemp("models")
    return {
        "ddim": build_tiny_sd15(root / "sd15"),
        "sd3": build_tiny_sd3(root / "sd3"),
        "flux": build_tiny_flux(root / "flux"),
    }


@pytest.fixture
def cli():
    """Invoke the real Typer app in-process: ``cli([...])`` -> click Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    def run(args: list[str]):
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run


def two_prompt_dataset(out, model: str):
    """A small unlabelled dataset through the real CLI: ``model``, 2 prompts x 3 samples, 2 steps."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    res = CliRunner().invoke(
        app,
        ["generate", "--out", str(out), "--model", model, "--prompt", "a red circle"]
        + ["--prompt", "a blue square", "--samples-per-prompt", "3", "--steps", "2", "--quiet"],
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def labelled_dataset(tiny_models, tmp_path_factory):
    """A small dataset made through the real CLI and labelled with --source jpeg: tiny SD3, 3 prompts x
    3 samples, 2 steps, prompt embeddings stored. Shared read-only: tests that add label sets or
    otherwise change a dataset make their own."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    out = tmp_path_factory.mktemp("labelled") / "ds"
    prompts = ["a red circle", "a blue square", "a green triangle"]
    args = ["generate", "--out", str(out), "--model", tiny_models["sd3"], "--samples-per-prompt", "3"]
    args += ["--steps", "2", "--store-embeddings", "--quiet"] + [a for p in prompts for a in ("--prompt", p)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["label", str(out), "--source", "jpeg", "--quiet"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def hub():
    """A fake Hugging Face Hub: a real HTTP server on 127.0.0.1 (tests/hub_server.py) keeping repositories
    in memory. Nothing in huggingface_hub is patched: `hub_cli` runs prefkit against it in a fresh process.
    Every request it got must be one it implements."""
    from hub_server import FakeHub

    with FakeHub() as server:
        yield server
    assert server.unhandled == [], f"requests the fake Hub does not implement: {server.unhandled}"


@pytest.fixture
def hub_cli(hub, tmp_path_factory):
    """``hub_cli([...], NAME=value)``: the real ``prefkit`` command in a fresh process, pointed at the fake
    Hub (HF_ENDPOINT, HF_TOKEN, online, an empty HF_HOME); ``NAME=None`` removes a variable, any other
    value sets it. Returns the CompletedProcess (text, stdout and stderr apart)."""
    import subprocess
    import sys

    home = tmp_path_factory.mktemp("hf-home")

    def run(args: list, timeout: float = 600, **env_changes: str | None):
        env = hub.env(dict(os.environ), str(home))
        for name, value in env_changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return subprocess.run(
            [sys.executable, "-m", "prefkit.cli.main", *map(str, args)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
