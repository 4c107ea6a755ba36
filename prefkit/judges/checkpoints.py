"""Finding and reading the published checkpoint files of the judges that ship as one ``.pt`` file.

HPSv2.1 (``HPS_v2.1_compressed.pt`` in the Hub repository ``xswu/HPSv2``) and ImageReward
(``ImageReward.pt`` and ``med_config.json`` in ``THUDM/ImageReward``) are not transformers folders: each
is a torch state dict in its authors' own module layout. ``checkpoint_file`` finds such a file from
``--weights`` (a file), or ``--judge-model`` (a local folder, a local file, or a Hub repository id with
``--judge-revision``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError


def checkpoint_file(
    source: str, filename: str, *, model: str | None, revision: str | None, weights: str | None
) -> Path:
    """The local path of ``filename``: ``weights`` itself when given, else ``model/filename`` for a local
    folder, ``model`` for a local file, or the file downloaded (or taken from the cache) from the Hub
    repository ``model`` at ``revision``."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise PrefkitError(f"--weights {weights!r}: no such file")
        return path
    assert model is not None
    local = Path(model).expanduser()
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise PrefkitError(
                f"--judge-model {model!r}: the folder has no {filename} (the {source} checkpoint); "
                "pass --weights FILE to name it"
            )
        return path
    if local.is_file():
        return local
    return hub_file(source, model, filename, revision)


def hub_file(source: str, repo: str, filename: str, revision: str | None) -> Path:
    """``filename`` of the Hub model repository ``repo`` (from the local cache when it is there)."""
    from prefkit.hub import REPO_ID

    if not REPO_ID.fullmatch(repo):
        raise PrefkitError(
            f"--judge-model {repo!r}: neither a local folder or file nor a Hub repository id (OWNER/NAME)"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except Exception as exc:  # network, offline mode, missing file, gated repository ...
        raise PrefkitError(
            f"cannot get {filename} of the Hub repository {repo!r}"
            f"{f' at revision {revision!r}' if revision else ''} for the {source} judge: {exc}\n"
            "Pass --judge-model with a local folder holding it, or --weights FILE."
        ) from exc


def read_state_dict(source: str, path: Path) -> dict[str, Any]:
    """A plain state dict of tensors from ``path`` (``torch.load(weights_only=True)``, or safetensors by
    suffix); a ``{"state_dict": ...}`` wrapper (as HPSv2 saves) and a DDP ``module.`` prefix are removed."""
    from prefkit.judges.clip import load_state_dict_file

    state = load_state_dict_file(path)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if not state:
        raise PrefkitError(f"--weights {str(path)!r}: the {source} checkpoint holds no tensors")
    return state
