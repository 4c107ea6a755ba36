"""The Hugging Face Hub as prefkit names it: what a repository id looks like."""

from __future__ import annotations

import re

# OWNER/NAME of a Hub repository (a model or a dataset)
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
