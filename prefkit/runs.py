"""A training run folder as the stages after training read it (docs/formats.md section 8): where a LoRA
came from (the run's ``config.yaml``, its dataset's manifest), where its eval report goes, the mean metrics
of a run's last steps. Used by ``prefkit eval``, ``prefkit publish --lora`` and the training engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the LoRA file of OUT/lora and OUT/checkpoint-N
SUMMARY_WINDOW = 20  # a run's summary averages the metrics of this many last steps


@dataclasses.dataclass
class Origin:
    """Where a LoRA came from: its folder, and the training run and dataset behind it when found."""

    lora: Path  # absolute; holds pytorch_lora_weights.safetensors
    run: Path | None = None  # the training run folder (its config.yaml)
    train: dict[str, Any] | None = None  # the run's resolved TrainConfig (config.yaml)
    dataset: str | None = None  # the run's dataset, as config.yaml names it
    manifest: dict[str, Any] | None = None  # the dataset's manifest.json, when found here
    folder: Path | None = None  # the folder holding that manifest.json
    notes: list[str] = dataclasses.field(default_factory=list)
    missing_dataset: str | None = None  # why the run's dataset was not found (the cause of later errors)


def find_origin(spec: str | None) -> Origin:
    """The LoRA folder ``spec`` (OUT/lora, OUT/checkpoint-N, OUT, or any diffusers LoRA folder) and, when
    it sits in a prefkit training run, that run's config and its dataset's manifest."""
    import yaml

    from prefkit.shards import MANIFEST, read_manifest

    if not spec:
        raise PrefkitError("--lora is required: the LoRA folder that prefkit train wrote (OUT/lora)")
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise PrefkitError(f"--lora {spec}: no such folder")
    if (folder / LORA_WEIGHTS).is_file():
        lora = folder
    elif (folder / "lora" / LORA_WEIGHTS).is_file():
        lora = folder / "lora"  # the run folder OUT itself
    else:
        raise PrefkitError(
            f"--lora {spec}: no {LORA_WEIGHTS} in that folder (nor in its lora/); give the folder that "
            "prefkit train wrote: OUT/lora, or a checkpoint OUT/checkpoint-N"
        )
    origin = Origin(lora=lora.resolve())
    run = origin.lora.parent
    config = run / "config.yaml"
    if not config.is_file():
        origin.notes.append(f"no training run found (no config.yaml beside {origin.lora})")
        return origin
    try:
        train = {k.replace("-", "_"): v for k, v in (yaml.safe_load(config.read_text()) or {}).items()}
    except (yaml.YAMLError, AttributeError) as exc:
        raise PrefkitError(f"--lora {spec}: {config} is not a readable training config: {exc}") from None
    if "objective" not in train:  # some other tool's config.yaml
        origin.notes.append(f"{config} is not a prefkit training config; no training run used")
        return origin
    origin.run, origin.train, origin.dataset = run, train, train.get("dataset")
    ds = Path(str(origin.dataset or "")).expanduser()
    # runs record the dataset's absolute path; an older run's relative path is tried from here, then from
    # the run folder's parent (a run folder and its dataset moved together)
    places = [ds] if ds.is_absolute() else [ds, run.parent / ds, run.parent.parent / ds]
    for place in places:
        for candidate in (place, place / "trajectories"):  # a generate folder, or a published folder
            if origin.dataset and (candidate / MANIFEST).is_file():
                origin.manifest, origin.folder = read_manifest(candidate), candidate
                return origin
    origin.missing_dataset = (
        f"the training run's dataset {origin.dataset!r} (in {config}) has no manifest.json at "
        + " nor at ".join(str(p.resolve()) for p in places)
    )
    origin.notes.append(
        origin.missing_dataset + "; sampler settings not given as flags are the model's defaults"
    )
    return origin


def default_out(lora: Path) -> Path:
    """OUT/eval for OUT/lora; OUT/eval-checkpoint-N for OUT/checkpoint-N; eval-NAME beside folder NAME."""
    return lora.parent / ("eval" if lora.name == "lora" else f"eval-{lora.name}")


def recent_means(metrics_path: Path, window: int, up_to: int | None = None) -> dict[str, Any]:
    """The mean of each metric over the last ``window`` steps of metrics.jsonl (steps before a resume
    included): {"steps": n, "first_step", "last_step", metric: mean}. One micro-batch's loss and accuracy
    (a few pairs) swing from step to step; this is what a run's end summary reports."""
    lines = metrics_path.read_text().splitlines()
    records = []
    for line in lines if up_to is not None else lines[-window:]:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    if up_to is not None:  # a checkpoint's window: the last steps up to it
        records = [r for r in records if isinstance(r, dict) and isinstance(r.get("step"), int)]
        records = [r for r in records if r["step"] <= up_to][-window:]
    skip = {"step", "epoch", "lr"}
    means: dict[str, Any] = {
        "steps": len(records),
        "first_step": records[0]["step"] if records else None,
        "last_step": records[-1]["step"] if records else None,
    }
    for key in records[-1] if records else ():
        values = [r.get(key) for r in records]
        if key not in skip and all(isinstance(v, (int, float)) for v in values):
            means[key] = sum(values) / len(values)
    return means
