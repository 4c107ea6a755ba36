"""Recommended training settings a model folder carries: ``prefkit_train.json`` beside model_index.json
(docs/formats.md, "Recommended training settings"). The built-in tiny-shapes model ships one, so that its
quickstart needs no overriding flags: the papers' defaults (lr 3e-5 for SD-size models) are far too small
for a model of 3 M parameters.

The file maps "all" and objective names to TrainConfig settings: {"all": {"lr": 0.001}, "d3po": {...}}.
A setting is taken only where the user did not give it (on the command line or in --config), and each
one taken is said in a note. Only optimisation settings may be recommended: what the data kinds read when
they open a dataset (labels, guidance, advantages' statistics ...) and what names files are not.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError

FILE = "prefkit_train.json"
# settings a model folder may not set: where things are, what is trained on, and what the data kinds read
NOT_RECOMMENDED = frozenset(
    "dataset out objective labels model init_lora guidance negative_prompt resolution min_prompt_count "
    "adv_clip reference old_policy force resume quiet log_with checkpoint_every push_to_hub".split()
)


def read_recommended(model_folder: str | Path, objective: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The settings ``model_folder``'s prefkit_train.json recommends for ``objective`` ({} without one),
    each checked: a known, recommendable setting of the field's type."""
    from prefkit.config import check_value

    path = Path(model_folder) / FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrefkitError(f"{path}: not readable JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise PrefkitError(f'{path}: expected an object of sections ("all", objective names)')
    out: dict[str, Any] = {}
    for section in ("all", objective):
        values = data.get(section) or {}
        if not isinstance(values, dict):
            raise PrefkitError(f"{path}: section {section!r} must be an object of settings")
        for key, value in values.items():
            if key not in fields or key in NOT_RECOMMENDED:
                raise PrefkitError(
                    f"{path}: {section}.{key}: not a setting a model folder may recommend (optimisation "
                    "settings of prefkit train only)"
                )
            out[key] = check_value(path, f"{section}.{key}", value, fields[key])
    return out


def apply_recommended(cfg, model_folder: str | Path, given: frozenset[str] | None) -> tuple[Any, list[str]]:
    """(cfg with the folder's recommendations where the user gave no value, one note per setting taken).
    ``given``: the settings the user set (command line, --config); None = those that differ from the
    field's default (a library call)."""
    import typing

    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    wanted = read_recommended(model_folder, cfg.objective, hints)
    taken = {}
    for key, value in wanted.items():
        user_set = key in given if given is not None else getattr(cfg, key) != fields[key].default
        if not user_set and getattr(cfg, key) != value:
            taken[key] = value
    notes = [
        f"--{k.replace('_', '-')} {v} (recommended by {Path(model_folder) / FILE})" for k, v in taken.items()
    ]
    return dataclasses.replace(cfg, **taken), notes
