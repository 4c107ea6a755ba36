"""The helpers every stage shares (prefkit.fileio, prefkit.resources, Family's network and prompt cache):
the formats they write are the ones the stages wrote before, byte for byte."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from prefkit.errors import PrefkitError
from prefkit.fileio import check_output_folder, jsonable, utc_timestamp, write_yaml
from prefkit.hub import hub_offline


def test_utc_timestamp_formats():
    t = 1_700_000_000.1239
    assert utc_timestamp(t) == "2023-11-14T22:13:20Z"
    assert utc_timestamp(t, ms=True) == "2023-11-14T22:13:20.123Z"
    assert utc_timestamp(1_700_000_000.0, ms=True) == "2023-11-14T22:13:20.000Z"
    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    now = utc_timestamp()
    assert len(now) == len(before) and before <= now
    assert now.endswith("Z") and utc_timestamp(ms=True)[-5] == "."


def test_jsonable():
    assert jsonable({"p": Path("a/b"), "t": (1, 2.5), "n": None, "d": {"x": [True]}}) == {
        "p": "a/b",
        "t": [1, 2.5],
        "n": None,
        "d": {"x": [True]},
    }


def test_write_yaml_dashes_keys_in_order(tmp_path):
    import yaml

    path = tmp_path / "config.yaml"
    write_yaml(path, {"lora_rank": 4, "out": "x", "prompt": ["a", "b"], "beta": None})
    assert path.read_text() == "lora-rank: 4\nout: x\nprompt:\n- a\n- b\nbeta: null\n"
    assert yaml.safe_load(path.read_text()) == {
        "lora-rank": 4,
        "out": "x",
        "prompt": ["a", "b"],
        "beta": None,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left


def test_check_output_folder(tmp_path):
    hint = "pass --resume to continue"
    assert check_output_folder(tmp_path / "new", allow=False, hint=hint) is False
    assert check_output_folder(tmp_path, allow=False, hint=hint) is False  # empty
    (tmp_path / "f").write_text("")
    with pytest.raises(
        PrefkitError, match=re.escape(f"--out {tmp_path}: the folder is not empty; {hint}") + "$"
    ):
        check_output_folder(tmp_path, allow=False, hint=hint)
    assert check_output_folder(tmp_path, allow=True, hint=hint) is True
    with pytest.raises(PrefkitError, match="^--staging .*f: exists and is not a folder$"):
        check_output_folder(tmp_path / "f", allow=True, hint=hint, flag="--staging")


@pytest.mark.parametrize(
    ("value", "offline"),
    [("1", True), ("true", True), (" YES ", True), ("On", True), ("0", False), ("", False), ("no", False)],
)
def test_hub_offline_reads_the_environment(monkeypatch, value, offline):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub_offline() is offline
    assert hub_offline(library=True) is offline


def test_hub_offline_library_flag(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_offline() is False  # the environment only
    assert hub_offline(library=True) is True  # huggingface_hub would refuse its calls


def _family():
    from prefkit.families import Family

    fam = Family(SimpleNamespace(device="cpu", vae_scale_factor=8))
    calls = []
    fam._encode_one = lambda prompt: calls.append(prompt) or (prompt, None, None)
    return fam, calls


def test_family_using_restores_the_network():
    fam, _ = _family()
    a, b = object(), object()
    assert fam.net is None
    fam.set_network(a)
    with fam.using(b):
        assert fam.net is b
    assert fam.net is a
    with pytest.raises(RuntimeError), fam.using(None):
        assert fam.net is None
        raise RuntimeError
    assert fam.net is a


def test_family_forget_prompt_encodings():
    fam, calls = _family()
    fam._encode_cached("a")
    fam._encode_cached("a")
    assert calls == ["a"]
    fam.forget_prompt_encodings()
    fam.forget_prompt_encodings()  # nothing cached: fine
    fam._encode_cached("a")
    assert calls == ["a", "a"]
