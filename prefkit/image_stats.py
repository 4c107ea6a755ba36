"""Image statistics that reveal reward hacking, computed on the images themselves (prefkit eval): a
judge can be fooled by over-saturated colours, a blanked or darkened background, grid artefacts or a
flattened picture long before a person looks. Each statistic is one number per RGB image:

  saturation       mean HSV saturation, 0..1
  colour_entropy   entropy in bits of the colour histogram (3 bits per channel: 512 colours), 0..9
  dark_fraction    share of pixels whose luma (ITU-R BT.601) is below 10 % of full scale
  high_frequency   mean squared difference of horizontally and vertically adjacent luma values,
                   luma on 0..1 (edges, noise and grid artefacts raise it; blur lowers it)
  jpeg_bits        JPEG size at quality 95 in bits per pixel (DDPO's compressibility reward)

``compare`` pairs base and tuned images of the same seeds: per statistic the means, the paired
difference with its 95 % t interval, and the base images' seed-to-seed spread. A statistic is flagged
when the interval of the difference excludes 0 AND the mean difference is larger than that spread: the
tuned model moved it beyond what changing the seed does to the base model.

The seed-to-seed spread is the pooled within-prompt standard deviation of the base values,
sqrt(sum over prompts g and seeds i of (x_gi - mean_g)^2 / (N - G)) for N images of G prompts: what
changing the seed alone does. The standard deviation over all base images, which a first version used,
also counts how different the prompts' pictures are: on the built-in model's held-out captions (16
captions x 8 seeds, 10 steps) it was 1.05 to 3.5 times the pooled one (saturation 0.298 against 0.084,
high-frequency energy 0.0051 against 0.0023, JPEG bits 0.96 against 0.91), and a LoRA that painted most
pictures orange (saturation +0.234, high-frequency energy -0.0044: docs/results.md) was flagged on no
statistic; with the pooled spread, on those two. With one image per prompt (N = G) there is no seed-to-seed spread
to pool, and the standard deviation over all images is used.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

STATS = ("saturation", "colour_entropy", "dark_fraction", "high_frequency", "jpeg_bits")


def image_stats(image) -> dict[str, float]:
    """The statistics (module docstring) of one PIL image."""
    rgb = image.convert("RGB")
    a = np.asarray(rgb, dtype=np.float64) / 255.0  # [H, W, 3]
    hsv = np.asarray(rgb.convert("HSV"), dtype=np.float64) / 255.0
    luma = a @ np.array([0.299, 0.587, 0.114])
    q = (np.asarray(rgb, dtype=np.uint16) >> 5).reshape(-1, 3)  # 8 levels per channel
    counts = np.bincount(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2], minlength=512).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    dx = np.diff(luma, axis=1) ** 2
    dy = np.diff(luma, axis=0) ** 2
    hf = (dx.sum() + dy.sum()) / max(dx.size + dy.size, 1)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=95)
    return {
        "saturation": float(hsv[..., 1].mean()),
        "colour_entropy": float(-(p * np.log2(p)).sum()),
        "dark_fraction": float((luma < 0.1).mean()),
        "high_frequency": float(hf),
        "jpeg_bits": 8.0 * buf.tell() / (rgb.width * rgb.height),
    }


def seed_spread(values: Sequence[float], groups: Sequence[Any] | None = None) -> float | None:
    """The seed-to-seed spread (module docstring) of ``values``, ``groups[i]`` the prompt of value i: the
    pooled within-group standard deviation; the plain standard deviation without groups or when every group
    has one value; None below two values."""
    from prefkit.math.stats import mean_interval

    if groups is None or len(set(groups)) == len(values):
        return mean_interval(values)["std"]
    by_group: dict[Any, list[float]] = {}
    for g, v in zip(groups, values, strict=True):
        by_group.setdefault(g, []).append(v)
    squares = [(v - sum(vs) / len(vs)) ** 2 for vs in by_group.values() for v in vs]
    return float(np.sqrt(np.sum(squares) / (len(values) - len(by_group))))


def compare(
    base: Sequence[dict[str, float]], tuned: Sequence[dict[str, float]], groups: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Per statistic {base, tuned: mean intervals; difference: the paired tuned - base interval;
    base_spread: the base images' seed-to-seed spread (:func:`seed_spread`, ``groups[i]`` the prompt of
    image i); flagged}, and "flagged": the names flagged."""
    from prefkit.math.stats import mean_interval

    out: dict[str, Any] = {}
    for name in STATS:
        b = [s[name] for s in base]
        t = [s[name] for s in tuned]
        diff = mean_interval([y - x for x, y in zip(b, t, strict=True)])
        spread = seed_spread(b, groups)
        moved = diff["low"] is not None and (diff["low"] > 0 or diff["high"] < 0)
        out[name] = {
            "base": mean_interval(b),
            "tuned": mean_interval(t),
            "difference": diff,
            "base_spread": spread,
            "flagged": bool(moved and spread is not None and abs(diff["mean"]) > spread),
        }
    out["flagged"] = [name for name in STATS if out[name]["flagged"]]
    return out
