"""The model families: one module each (sd: SD 1.x/2.x, sdxl, sd3, flux), a :class:`Family` subclass that
names the diffusers pipelines it drives. ``family_of`` finds the adapter of a loaded pipeline by looking
through the modules of this package, so adding a family is adding its module (docs/commands.md).
"""

from __future__ import annotations

import importlib
import pkgutil

from prefkit.errors import PrefkitError
from prefkit.families.base import (
    DTYPES,
    Conditioning,
    Family,
    Schedule,
    batch_timesteps,
    load_lora,
    load_pipeline,
    loadable,
    own_cpu_weights,
    pad_prompt_embeds,
    quiet_libraries,
    resolve_model,
    t5_length,
)

__all__ = [
    "DTYPES",
    "Conditioning",
    "Family",
    "Schedule",
    "batch_timesteps",
    "families",
    "family_of",
    "load_lora",
    "load_pipeline",
    "loadable",
    "own_cpu_weights",
    "pad_prompt_embeds",
    "quiet_libraries",
    "resolve_model",
    "t5_length",
]


def families() -> dict[str, type[Family]]:
    """Pipeline class name -> its Family subclass, from every module of this package."""
    found: dict[str, type[Family]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Family) and obj.__module__ == module.__name__:
                for pipeline in obj.pipelines:
                    found[pipeline] = obj
    return found


def family_of(pipe) -> Family:
    """The :class:`Family` adapter of a loaded pipeline, or a clear error listing the supported ones."""
    known = families()
    cls = known.get(type(pipe).__name__)
    if cls is None:
        raise PrefkitError(
            f"pipeline class {type(pipe).__name__} is not supported; prefkit drives text-to-image pipelines "
            f"of these classes: {', '.join(sorted(known))} (not img2img, inpainting or video pipelines)"
        )
    return cls(pipe)
