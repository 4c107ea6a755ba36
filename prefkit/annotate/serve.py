"""``prefkit annotate``: serve the labelling page for a dataset, or export its votes as a label set.

Reads top to bottom: check the settings (the question and the guidelines file too) and the dataset
(nothing is written on bad input), list the pairs, take the dataset's server lock, bind the socket, open the
vote store (which refuses votes under another question unless --force-question) (a port in use is an error
here, not a trace), print the address, and run uvicorn until Ctrl-C. Every vote is committed when it is
acknowledged, so stopping (or killing) the server loses nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from prefkit.config import AnnotateConfig
from prefkit.errors import PrefkitError

LOCK_NAME = ".annotate.lock"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def annotation_pairs(folder: Path, samples, labels: str | None) -> list[tuple[str, str]]:
    """Every pair (key_0 < key_1) within each prompt group, or only the pairs of label set ``labels``."""
    from prefkit.label_sets import groups_of, read_pairs

    if labels is None:
        return [p for keys in groups_of(samples).values() for p in itertools.combinations(sorted(keys), 2)]
    pairs = []
    for rec in read_pairs(folder, labels):
        k0, k1 = sorted((rec["key_0"], rec["key_1"]))
        if k0 not in samples or k1 not in samples:
            raise PrefkitError(f"label set {labels!r} names sample {k0!r} or {k1!r}, not in {folder}")
        pairs.append((k0, k1))
    return sorted(set(pairs))


def export_votes(cfg: AnnotateConfig) -> dict[str, Any]:
    """``--export NAME``: the votes as a label set, through ``prefkit label --source annotate``."""
    from prefkit.config import LabelConfig
    from prefkit.label import run_label

    label_cfg = LabelConfig(
        dataset=cfg.dataset, source="annotate", name=cfg.export, overwrite=cfg.overwrite, quiet=cfg.quiet
    )
    return run_label(label_cfg)


def run_annotate(cfg: AnnotateConfig) -> dict[str, Any]:
    """Serve the page until stopped (or export, with ``cfg.export``); returns the final status."""
    from prefkit.annotate.instructions import Instructions, check_question, read_guidelines
    from prefkit.annotate.store import DB_NAME
    from prefkit.config import DEFAULT_QUESTION
    from prefkit.label_sets import check_name, dataset_samples
    from prefkit.shards import finished_shards, read_manifest

    # 1. check ------------------------------------------------------------------------------------------
    if not cfg.dataset:
        raise PrefkitError("DATASET is required: a folder written by `prefkit generate`")
    folder = Path(cfg.dataset).expanduser()
    if not folder.is_dir():
        raise PrefkitError(f"DATASET {folder}: no such folder")
    read_manifest(folder)
    if cfg.export is not None:
        serving = (
            (cfg.host, "127.0.0.1"),
            (cfg.token, None),
            (cfg.labels, None),
            (cfg.question, DEFAULT_QUESTION),
            (cfg.guidelines, None),
            (cfg.force_question, False),
        )
        if any(v != d for v, d in serving):
            raise PrefkitError(
                "--export writes a label set and serves nothing: drop --host, --token, --labels, --question, "
                "--guidelines, --force-question (each vote's question is in the database and goes to the "
                "label set's meta)"
            )
        check_name(folder, cfg.export, cfg.overwrite)
        return export_votes(cfg)
    if not 0 <= cfg.port <= 65535:
        raise PrefkitError(f"--port {cfg.port}: must be in 0..65535 (0: any free port)")
    if cfg.per_pair < 1:
        raise PrefkitError(f"--per-pair {cfg.per_pair}: must be at least 1")
    if cfg.lease <= 0:
        raise PrefkitError(f"--lease {cfg.lease}: must be > 0 seconds")
    if cfg.client_leases is not None and cfg.client_leases < 1:
        raise PrefkitError(f"--client-leases {cfg.client_leases}: must be at least 1")
    token = cfg.token
    if token is not None and len(token) < 16:
        raise PrefkitError("--token: use at least 16 characters (or leave it out to get a generated one)")
    loopback = is_loopback(cfg.host)
    if not loopback and token is None:
        token = secrets.token_urlsafe(24)
    question = check_question(cfg.question)
    guidelines, guidelines_sha256 = read_guidelines(cfg.guidelines)
    instructions = Instructions(question, guidelines, guidelines_sha256)
    if not finished_shards(folder):
        raise PrefkitError(f"{folder}: no finished shards (shard-*.tar); nothing to annotate")

    # 2. pairs and store --------------------------------------------------------------------------------
    from prefkit.annotate.images import ImageIndex
    from prefkit.annotate.store import VoteStore

    samples = dataset_samples(folder)
    pairs = annotation_pairs(folder, samples, cfg.labels)
    if not pairs:
        raise PrefkitError(f"{folder}: no pairs to annotate (each prompt group needs 2 or more samples)")
    images = ImageIndex(folder)
    missing = [k for k in samples if k not in images]
    if missing:
        images.close()
        raise PrefkitError(f"{folder}: sample {missing[0]!r} has no png in its shard")
    lock = sock = store = None
    try:
        lock = _lock(folder)
        sock = _bind(cfg.host, cfg.port)  # before the database: a port in use leaves no file behind
        port = sock.getsockname()[1]
        url = _url(cfg.host, port, token)
        store = VoteStore(
            folder / DB_NAME,
            pairs,
            cfg.per_pair,
            cfg.lease,
            client_leases=cfg.client_leases,
            question=question,
            guidelines=guidelines,
            force_question=cfg.force_question,
        )
        with contextlib.suppress(OSError):  # who holds the lock is a courtesy; a full disk must not stop us
            os.ftruncate(lock, 0)
            os.pwrite(lock, f"{os.getpid()} {url.split('?')[0]}\n".encode(), 0)
        _announce(cfg, folder, pairs, samples, url, token, store)
        _serve(store, images, samples, instructions, sock, cfg.host, port, token)
        return store.status()
    finally:
        if store is not None:
            store.close()
        if sock is not None:
            sock.close()
        if lock is not None:
            os.close(lock)
        images.close()


def _lock(folder: Path) -> int:
    """An exclusive lock on DATASET/.annotate.lock for the server's lifetime (released by the kernel, even
    after a SIGKILL): two servers on one dataset would hand out the same pairs."""
    import fcntl

    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        import errno

        if exc.errno == errno.EROFS:
            why = f"{folder} is on a read-only file system; copy the dataset to a writable place and annotate the copy"
        elif exc.errno == errno.ENOSPC:
            why = f"the disk is full; free some space on the file system of {folder} and start again"
        else:
            why = f"{exc.strerror}; make {folder} writable (the votes are stored there)"
        raise PrefkitError(f"{path}: cannot create the server lock: {why}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise PrefkitError(
            f"{folder} is already being annotated (pid and address: {holder}); stop that server first"
        ) from None
    return fd


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == 98:  # EADDRINUSE
            raise PrefkitError(
                f"port {port} on {host} is already in use (another prefkit annotate?); choose another "
                "--port, or --port 0 for any free one"
            ) from None
        raise PrefkitError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(256)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int, token: str | None) -> str:
    shown = host
    if host in ("0.0.0.0", "::", ""):
        shown = socket.gethostname()
    elif ":" in host:
        shown = f"[{host}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _announce(cfg, folder, pairs, samples, url, token, store) -> None:
    from rich.console import Console
    from rich.markup import escape

    groups = len({samples[k0].group_id for k0, _ in pairs})
    st = store.status()
    console = Console(soft_wrap=True, highlight=False)
    console.print(
        f"[bold]prefkit annotate[/]: {len(pairs)} pairs from {groups} prompt groups, "
        f"{cfg.per_pair} annotator(s) per pair; {st['votes']} votes so far in {escape(str(store.path))}"
    )
    console.print(f"question: {escape(store.question)}", highlight=False)
    if cfg.guidelines is not None:
        console.print(f"guidelines: {escape(str(cfg.guidelines))} (sha256 {store.guidelines_sha256[:12]}...)")
    earlier = [
        r
        for r in store.instructions()
        if (r["question"], r["guidelines_sha256"]) != (store.question, store.guidelines_sha256)
    ]
    for r in earlier:
        what = "another question" if r["question"] != store.question else "other guidelines"
        sha = (r["guidelines_sha256"] or "none")[:12]
        console.print(
            f"[yellow]note: {r['decisions']} decision(s) so far were made under {what}: "
            f"{escape(repr(r['question']))}, guidelines {sha}; each keeps its own in the database[/]"
        )
    console.print(f"open [bold]{escape(url)}[/]  (Ctrl-C stops; every acknowledged vote is already saved)")
    if token and not is_loopback(cfg.host):
        console.print(
            "[yellow]listening beyond this machine: share the address with its token only with your "
            "annotators; it is checked on every request. Plain HTTP: use it on a trusted network or "
            "behind a TLS proxy.[/]"
        )
    console.print(f"export the votes: prefkit annotate {escape(str(folder))} --export NAME")
    sys.stdout.flush()


def _serve(store, images, samples, instructions, sock, host: str, port: int, token: str | None) -> None:
    import uvicorn

    from prefkit.annotate.app import AccessGate, create_app

    hosts = None
    if token is None:  # loopback only: the Host header must be a loopback name
        hosts = {"127.0.0.1", "localhost", "::1", host.lower()}
    app = AccessGate(
        create_app(store, images, samples, instructions), token, hosts, cookie=f"prefkit_token_{port}"
    )
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the Ctrl-C it handled once it has shut down: that is the normal way out
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
