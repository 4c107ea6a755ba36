"""Where prefkit's resources are: the repository's data/ and schemas/ folders, and whether the Hugging
Face Hub may be reached.

Installed, data/ and schemas/ are the packages ``prefkit._data`` and ``prefkit._schemas`` (pyproject.toml
maps the folders in); in a source checkout that is not installed they sit beside the ``prefkit/`` folder.
"""

from __future__ import annotations

from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _folder(package: str, repo_name: str) -> Path:
    try:
        from importlib.resources import files

        path = Path(str(files(package)))
        if path.is_dir():
            return path
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    return _REPO / repo_name


def data_dir() -> Path:
    """prompts/, models/ (the built-in tiny model), configs."""
    return _folder("prefkit._data", "data")


def schema_dir() -> Path:
    """JSON Schemas of every record prefkit writes."""
    return _folder("prefkit._schemas", "schemas")
