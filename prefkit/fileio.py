"""Writing and parsing files so that a failure is one clear error and leaves nothing half-written.

Every stage writes through :func:`atomic_write` (a temporary file in the same folder, fsync, rename; the
temporary file is removed on ANY failure) or inside :func:`writing`, which turns a file-system failure --
disk full, quota, read-only mount, no permission -- into a :class:`~prefkit.errors.PrefkitError` naming
the path and what to do. The CLI prints it as one line and exits 2. Libraries that write on their own
(safetensors, pyarrow, PIL) report the same failures as other exception types whose message carries the
OS error; :func:`fs_error` recognises those too.

What every stage writes the same way lives here too: :func:`check_output_folder` (an --out that is a
file, or not empty without --resume / --overwrite), :func:`write_yaml` (config.yaml), :func:`jsonable`
(records as plain JSON) and :func:`utc_timestamp` (``created_at``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from prefkit.errors import PrefkitError

# what to do about each file-system failure
_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space (or choose a folder on another disk) and run again",
    errno.EDQUOT: "disk quota exceeded; free some space (or choose a folder on another disk) and run again",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write to, or fix its permissions",
}
# the same failures as other libraries word them (safetensors: Rust's io::Error; pyarrow: its own OSError)
_WORDS = (
    ("No space left on device", errno.ENOSPC),
    ("os error 28", errno.ENOSPC),
    ("StorageFull", errno.ENOSPC),
    ("Disk quota exceeded", errno.EDQUOT),
    ("Read-only file system", errno.EROFS),
    ("os error 30", errno.EROFS),
    ("ReadOnlyFilesystem", errno.EROFS),
    ("Permission denied", errno.EACCES),
    ("os error 13", errno.EACCES),
)


def fs_error(exc: BaseException, path: str | Path | None = None) -> PrefkitError | None:
    """The PrefkitError for a file-system failure (disk full, read-only, no permission), naming ``path``
    (else the exception's own file name); None for any other exception."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code not in _ADVICE:
        text = str(exc)
        code = next((c for words, c in _WORDS if words in text), None)
    if code is None:
        return None
    where = path if path is not None else getattr(exc, "filename", None)
    return PrefkitError(f"{where or 'output'}: cannot write: {_ADVICE[code]}")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Writes inside the block that fail for lack of space or permission raise one PrefkitError naming
    ``path``; other exceptions pass unchanged."""
    try:
        yield
    except PrefkitError:
        raise
    except Exception as exc:
        err = fs_error(exc, path)
        if err is None:
            raise
        raise err from None


def remove_quietly(path: Path) -> None:
    """Remove a file or folder left by a failed write; a read-only file system may refuse, which is fine."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def removed_on_failure(*paths: Path, name: str | Path | None = None) -> Iterator[None]:
    """Remove ``paths`` (temporary files or folders) when the block fails in any way, then re-raise;
    file-system failures as PrefkitError naming ``name`` (default: the first path)."""
    with writing(name if name is not None else paths[0]):
        try:
            yield
        except BaseException:
            for p in paths:
                remove_quietly(Path(p))
            raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **kw: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; when the block ends, fsync it and rename it to ``path``. A
    reader sees the old file or the whole new one; on any failure the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path):
        try:
            with open(tmp, mode, **kw) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            remove_quietly(tmp)
            raise
        fsync_dir(path.parent)


def append_line(path: str | Path, line: str) -> None:
    """Append one line; when the write fails (a full disk), the file is cut back to its old length so no
    torn line is left (a kill can still tear it: readers drop a last line without its newline)."""
    path = Path(path)
    data = memoryview((line + "\n").encode("utf-8"))
    with writing(path), open(path, "ab", buffering=0) as f:
        size = f.tell()
        try:
            while data:  # unbuffered: a short write is retried, and its error raised here
                data = data[f.write(data) :]
        except BaseException:
            with contextlib.suppress(OSError):
                f.truncate(size)
            raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, rename."""
    with atomic_write(path) as f:
        f.write(data)


def write_yaml(path: str | Path, values: dict[str, Any]) -> None:
    """Write ``values`` as YAML to ``path`` atomically, keys with dashes as on the command line
    (``lora_rank`` -> ``lora-rank``) and in the given order: the config.yaml every stage writes, which
    ``--config`` loads back."""
    import yaml

    data = yaml.safe_dump({k.replace("_", "-"): v for k, v in values.items()}, sort_keys=False)
    atomic_write_bytes(path, data.encode())


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (dicts, lists, str, numbers, bools, None): anything else that
    :func:`json.dumps` cannot write (a Path, a torch.dtype...) becomes its ``str``; tuples become lists."""
    return json.loads(json.dumps(value, default=str))


def utc_timestamp(t: float | None = None, ms: bool = False) -> str:
    """``t`` (seconds since the epoch; default now) as UTC ISO 8601: ``2025-01-31T12:00:00Z``, or with
    ``ms`` ``2025-01-31T12:00:00.123Z`` (milliseconds truncated)."""
    if t is None:
        t = time.time()
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    return text + (f".{int(t % 1 * 1000):03d}Z" if ms else "Z")


def check_output_folder(path: str | Path, *, allow: bool, hint: str, flag: str = "--out") -> bool:
    """Refuse an output folder that cannot be written into: ``path`` exists and is not a folder, or it is a
    folder with something in it and ``allow`` (the command's --resume or --overwrite) is false; the error
    names ``flag`` and ``path`` and ends with ``hint`` (what to do). Returns whether the folder exists and
    is not empty (then the caller resumes, replaces or checks what is there)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PrefkitError(f"{flag} {path}: exists and is not a folder")
    full = path.is_dir() and any(path.iterdir())
    if full and not allow:
        raise PrefkitError(f"{flag} {path}: the folder is not empty; {hint}")
    return full


def parse_json(text: str | bytes, where: str, whole_file: bool = False) -> Any:
    """json.loads with one PrefkitError naming ``where`` (``where:LINE`` for a ``whole_file``) for text that
    is not UTF-8, not JSON, or nested so deeply that the parser runs out of stack (RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"{where}:{exc.lineno}" if whole_file else where
        raise PrefkitError(f"{at}: not JSON ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise PrefkitError(
            f"{where}: JSON nested too deeply to read; the file is damaged or hostile"
        ) from None
    except UnicodeDecodeError as exc:
        raise PrefkitError(f"{where}: not UTF-8 text ({exc.reason})") from None


def jsonl_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """("FILE:LINE", parsed value) for every non-blank line of a JSON Lines file (a UTF-8 BOM allowed); a
    line that is not JSON or not UTF-8 is one PrefkitError naming FILE:LINE. The value is not checked."""
    with open(path, "rb") as f:
        for i, line in enumerate(f, 1):
            if i == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if line.strip():
                where = f"{path}:{i}"
                yield where, parse_json(line, where)


def jsonl_objects(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """:func:`jsonl_records` where every line must be a JSON object."""
    for where, rec in jsonl_records(path):
        if not isinstance(rec, dict):
            raise PrefkitError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        yield where, rec


@contextlib.contextmanager
def reading(path: str | Path, what: str = "prefkit shard") -> Iterator[None]:
    """Reading a file made by someone else: a damaged or foreign file (a truncated tar, a sample json that
    is not an object or lacks keys, members that do not belong) raises inside the block as whatever the
    parser happened to raise; here it becomes one PrefkitError naming ``path``."""
    import tarfile

    try:
        yield
    except PrefkitError:
        raise
    except (tarfile.TarError, EOFError, OSError, KeyError, IndexError, TypeError, ValueError, AttributeError,
            RecursionError) as exc:  # fmt: skip
        err = fs_error(exc)
        if err is not None:
            raise err from None
        detail = " ".join(str(exc).split())[:200]
        raise PrefkitError(
            f"{path}: not a readable {what} ({type(exc).__name__}: {detail}); the file is damaged or was "
            "not written by prefkit: regenerate it or remove it from the folder"
        ) from None
