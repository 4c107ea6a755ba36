"""The table of objectives (prefkit/training/table.py) and what derives from it: TrainConfig's fields,
the resume keys, the CLI's flags, the refusals, and docs/objectives.md."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from prefkit.errors import PrefkitError
from prefkit.training.config import RESUME_KEYS, TrainConfig, resolve, unread_flags
from prefkit.training.step import ObjectiveStep
from prefkit.training.table import OBJECTIVES, flags

DOCS = Path(__file__).resolve().parents[2] / "docs" / "objectives.md"


def test_every_row_names_an_existing_step_class_and_its_flags_are_config_fields():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for row in OBJECTIVES.values():
        module, name = row.step.split(":")
        assert issubclass(getattr(importlib.import_module(module), name), ObjectiveStep), row.name
        assert {f.name for f in row.flags} <= fields
        assert set(row.defaults) <= fields


def test_a_new_field_is_checked_on_resume_unless_it_says_otherwise():
    free = {f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("resume", True)}
    assert free == {
        "out",
        "max_steps",
        "gradient_checkpointing",
        "checkpoint_every",
        "force",
        "log_with",
        "resume",
        "quiet",
        "device",
        "validation_prompts",
        "validation_every",
        "push_to_hub",
    }
    assert set(RESUME_KEYS) == {f.name for f in dataclasses.fields(TrainConfig)} - free
    assert set(flags()) <= set(RESUME_KEYS)  # every objective flag, e.g. tdpo's critic_lr


def test_row_defaults_fill_unset_settings_only():
    base = {"dataset": "d", "out": "o"}
    assert resolve(TrainConfig(**base, objective="d3po")).beta == 0.1
    assert resolve(TrainConfig(**base, objective="dense")).beta == 10.0
    assert resolve(TrainConfig(**base, objective="dense")).weight_decay == 2e-3
    assert resolve(TrainConfig(**base, objective="dense", beta=3.0, weight_decay=0.0)).beta == 3.0
    assert resolve(TrainConfig(**base, objective="ddpo")).beta is None  # no beta in ddpo


def test_unread_flags_are_refused_when_strict_and_noted_otherwise():
    base = {"dataset": "d", "out": "o"}
    with pytest.raises(PrefkitError, match="--kl-coef is read by d3po and dense and ddpo and tdpo, not by"):
        resolve(TrainConfig(**base, objective="diffusion-dpo", kl_coef=0.1))
    cfg = TrainConfig(**base, objective="ddpo", critic_reset_every=2, gamma=0.5)
    resolve(cfg)  # not strict: accepted
    assert unread_flags(cfg) == [
        ("--gamma is read by dense", False),
        ("--critic-reset-every is read by tdpo", False),
    ]


def test_the_cli_has_exactly_the_config_fields():
    from typer.main import get_command

    from prefkit.cli.main import app

    train = get_command(app).commands["train"]
    names = {p.name for p in train.params if not p.name.startswith("_alias_")} - {"config"}
    assert names == {f.name for f in dataclasses.fields(TrainConfig)}


def test_docs_list_every_objective_with_its_data_kind():
    text = DOCS.read_text()
    for row in OBJECTIVES.values():
        assert f"| `{row.name}` | {row.data} |" in text, row.name


def test_log_with_names_the_missing_package():
    import importlib.util

    from prefkit.training.engine import check_trackers

    assert check_trackers(None) is None
    with pytest.raises(PrefkitError, match="--log-with mlflow: choose tensorboard or wandb"):
        check_trackers("mlflow")
    for name in ("tensorboard", "wandb"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(
                PrefkitError, match=rf"the {name} package is not installed; pip install 'prefkit\[trackers\]'"
            ):
                check_trackers(f" {name} ")
        else:
            assert check_trackers(name) == [name]
