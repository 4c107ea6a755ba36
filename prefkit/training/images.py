"""The image-pair data kind: pairs of final images in Pick-a-Pic format (Diffusion-DPO; docs/formats.md).

Input: any dataset ``datasets.load_dataset`` reads with columns caption, jpg_0, jpg_1 (raw image bytes),
label_0 (P(jpg_0 wins): > 0.5 jpg_0 won, 0.5 a tie) -- a folder published by ``prefkit publish`` (its
default config, ``train`` split), a parquet file, or a Hub id. Ties are dropped and counted.

Per micro-batch the JPEGs are decoded, resized and centre-cropped (``pipe.image_processor``) and encoded
with the VAE (``latent_dist.mode()``, then SD3/FLUX's (z - shift) * scale, SD's z * scale).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from prefkit.errors import PrefkitError
from prefkit.hub import hub_offline
from prefkit.training.batch import ImagePair, Pair, decided

COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
# FLUX.1-dev takes the guidance scale as an input (no CFG pass); its usual training value
FLUX_EMBEDDED_GUIDANCE = 3.5


def _published_manifest(spec: str) -> dict | None:
    path = Path(spec).expanduser() / "trajectories" / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_image_dataset(spec: str):
    """The ``train`` split (or the only split) of a Pick-a-Pic-format dataset, columns checked."""
    import datasets

    path = Path(spec).expanduser()
    try:
        if path.is_file():
            kind = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(path.suffix)
            if kind is None:
                raise PrefkitError(f"DATASET {spec}: a file must be .parquet, .json(l) or .csv")
            loaded = datasets.load_dataset(kind, data_files=str(path))
        else:
            loaded = datasets.load_dataset(str(path) if path.exists() else spec)
    except PrefkitError:
        raise
    except Exception as exc:  # offline, not found, unreadable: one clear message, no stack trace
        hint = ""
        if not path.exists():
            hint = (
                " (no such local file or folder; as a Hub id it needs the network"
                + (", and HF_HUB_OFFLINE=1 is set" if hub_offline() else "")
                + ")"
            )
        raise PrefkitError(
            f"DATASET {spec}: could not be loaded with datasets.load_dataset{hint}: {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise PrefkitError(f"DATASET {spec}: no train split (splits: {', '.join(loaded)})")
    missing = [c for c in COLUMNS if c not in loaded.column_names]
    if missing:
        raise PrefkitError(
            f"DATASET {spec}: not in Pick-a-Pic format; missing column(s) {', '.join(missing)} "
            f"(has {', '.join(loaded.column_names)})"
        )
    # raw bytes, never decoded by datasets (an Image feature is read back as {"bytes", "path"})
    for c in ("jpg_0", "jpg_1"):
        if isinstance(loaded.features[c], datasets.Image):
            loaded = loaded.cast_column(c, datasets.Image(decode=False))
    return loaded


def image_pairs(ds, spec: str) -> tuple[list[ImagePair], dict]:
    """Decided pairs (ties, label_0 == 0.5, dropped and counted) in row order."""
    kept, counts = decided(enumerate(ds["label_0"]))
    pairs = [ImagePair(i, first_won, weight, f"row-{i}") for i, first_won, weight in kept]
    if not pairs:
        raise PrefkitError(
            f"DATASET {spec}: no decided pair to train on ({counts['ties_skipped']} ties dropped)"
        )
    return pairs, {"pairs": len(pairs), **counts}


def _image(value):
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    if hasattr(value, "convert"):
        return value.convert("RGB")
    raise PrefkitError(f"an image column holds {type(value).__name__}, not image bytes")


def encode_images(family, images: list, size: int) -> torch.Tensor:
    """PIL images -> VAE latents [N, C, h, w] in float32 (mode of the posterior, scaled/shifted)."""
    px = family.pipe.image_processor.preprocess(images, height=size, width=size, resize_mode="crop")
    return family.encode_pixels(px)


class ImageData:
    """A Pick-a-Pic-format dataset as the training data of one run (data kind image-pairs)."""

    def __init__(self, cfg, kind: str):
        self.cfg = cfg
        manifest = _published_manifest(cfg.dataset)
        model, load_from, revision, dtype = cfg.model, cfg.model, None, "float32"
        if manifest is not None:
            sampled, info = manifest.get("settings", {}), manifest.get("model", {})
            if model is None:
                model = sampled.get("model") or info.get("id")
                load_from = model
                local = info.get("path")
                if local and Path(local).is_dir():
                    load_from = local
                revision = sampled.get("revision")
            dtype = sampled.get("dtype", dtype) if cfg.model is None else dtype
        if model is None:
            raise PrefkitError(
                "--model is required for diffusion-dpo: the base model to train a LoRA on (the dataset names none)"
            )
        self.model, self.load_from, self.revision, self.dtype = model, load_from, revision, dtype
        self.ds = load_image_dataset(cfg.dataset)
        self.items, self.info = image_pairs(self.ds, cfg.dataset)
        self.family = self.size = None
        self.guidance = FLUX_EMBEDDED_GUIDANCE if cfg.guidance is None else cfg.guidance

    def load_pipeline(self, device):
        from prefkit.families import DTYPES, load_pipeline

        return load_pipeline(
            self.load_from, self.revision, DTYPES.get(self.dtype, torch.float32), device, False
        )

    def bind(self, family) -> None:
        """The training resolution (--resolution, else the model's default size), checked for ``family``."""
        self.family = family
        self.size = self.cfg.resolution or family.default_size()[0]
        family.check_size(self.size, self.size)

    def fetch(self, pairs: list[ImagePair]) -> tuple[Pair, list[str]]:
        """(VAE latents of the winners and of the losers, [B, C, h, w] each, float32), and the captions."""
        rows = [self.ds[p.row] for p in pairs]
        first = [_image(r["jpg_0"]) for r in rows]
        second = [_image(r["jpg_1"]) for r in rows]
        win = [a if p.first_won else b for p, a, b in zip(pairs, first, second, strict=True)]
        lose = [b if p.first_won else a for p, a, b in zip(pairs, first, second, strict=True)]
        x0 = encode_images(self.family, win + lose, self.size)  # one VAE batch: winners, then losers
        return Pair.split(x0), [r["caption"] or "" for r in rows]

    def summary(self) -> dict[str, Any]:
        return {
            "labels": self.info,
            "dataset": str(self.cfg.dataset),
            "model": self.model,
            "resolution": self.size,
        }

    def validation_sampler(self):
        """Validation images at the training resolution, with generate's default number of steps."""
        from prefkit.config import GenerateConfig
        from prefkit.sampling import SamplerSettings

        return SamplerSettings(
            steps=GenerateConfig.steps,
            guidance=self.guidance,  # --guidance, else 3.5 (FLUX.1-dev's embedded value; a mild CFG elsewhere)
            noise=self.family.default_noise,
            height=self.size,
            width=self.size,
        )

    def result(self) -> dict[str, Any]:
        """Entries of run_train's result besides the metrics: the pair counts."""
        return self.info
