"""The Hugging Face Hub as prefkit sees it: what a repository id looks like, and whether the Hub is off."""

from __future__ import annotations

import os
import re

# OWNER/NAME of a Hub repository (a model or a dataset)
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def hub_offline(library: bool = False) -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set to 1, true, yes or on (any case, surrounding spaces ignored: the
    values huggingface_hub itself accepts). With ``library``, also huggingface_hub's own flag
    (``huggingface_hub.constants.HF_HUB_OFFLINE``, read from the environment when it was first imported),
    which is what decides whether its calls are refused."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    if library:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return False
