"""Scorers for tests, importable as ``python:prefkit_test_scorers:FUNCTION`` (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np


def brightness(images, prompts):
    """Mean pixel value (0..255) of each image: higher is brighter."""
    return [float(np.asarray(im.convert("RGB"), dtype=np.float64).mean()) for im in images]
