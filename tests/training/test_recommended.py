"""A model folder's recommended training settings (prefkit_train.json, prefkit/training/recommended.py):
taken where the user gave no value, refused when malformed, and shipped with the built-in tiny-shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefkit.errors import PrefkitError
from prefkit.training.config import TrainConfig
from prefkit.training.recommended import FILE, apply_recommended


def _folder(tmp_path, data) -> str:
    (tmp_path / FILE).write_text(json.dumps(data))
    return str(tmp_path)


def test_recommended_settings_fill_what_the_user_did_not_give(tmp_path):
    folder = _folder(tmp_path, {"all": {"lr": 0.001}, "d3po": {"max_steps": 120, "kl_coef": 0.1}})
    cfg, notes = apply_recommended(TrainConfig(dataset="d", out="o", objective="d3po"), folder, None)
    assert (cfg.lr, cfg.max_steps, cfg.kl_coef) == (0.001, 120, 0.1)
    assert len(notes) == 3 and all(FILE in n for n in notes) and "--max-steps 120" in notes[1]
    # a value the user gave wins, even when it equals the default
    cfg, notes = apply_recommended(TrainConfig(dataset="d", out="o", lr=3e-5), folder, frozenset({"lr"}))
    assert cfg.lr == 3e-5 and cfg.max_steps == 120
    # without `given`, a value unlike the default counts as given
    cfg, _ = apply_recommended(TrainConfig(dataset="d", out="o", max_steps=7), folder, None)
    assert cfg.max_steps == 7
    # another objective takes only "all"
    cfg, _ = apply_recommended(TrainConfig(dataset="d", out="o", objective="dense"), folder, None)
    assert (cfg.lr, cfg.max_steps, cfg.kl_coef) == (0.001, 100, 0.0)


@pytest.mark.parametrize(
    "data,match",
    [
        ({"all": {"labels": "x"}}, r"all\.labels: not a setting a model folder may recommend"),
        ({"all": {"nope": 1}}, r"all\.nope: not a setting"),
        ({"d3po": {"max_steps": "many"}}, r"d3po\.max_steps: expected an integer"),
        ({"all": [1]}, r"section 'all' must be an object"),
    ],
)
def test_a_malformed_file_is_refused_naming_it(tmp_path, data, match):
    with pytest.raises(PrefkitError, match=match) as info:
        apply_recommended(TrainConfig(dataset="d", out="o"), _folder(tmp_path, data), None)
    assert FILE in str(info.value)


def test_the_builtin_model_ships_its_quickstart_settings():
    from prefkit.families import resolve_model
    from prefkit.models.shapes_model import RECOMMENDED_TRAIN

    folder = resolve_model("tiny-shapes")
    assert json.loads((Path(folder) / FILE).read_text()) == RECOMMENDED_TRAIN
    cfg, _ = apply_recommended(TrainConfig(dataset="d", out="o", objective="d3po"), folder, None)
    assert (cfg.lr, cfg.max_steps, cfg.batch_size, cfg.timestep_fraction, cfg.kl_coef) == (
        1e-3,
        120,
        8,
        0.5,
        0.1,
    )
