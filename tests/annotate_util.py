"""Helpers for the annotate tests: the real server as a subprocess, raw HTTP (with the annotators'
secrets), the vote database, and a small tmpfs to fill."""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
URL_LINE = re.compile(r"open (http://\S+?):(\d+)/(\?token=(\S+))?")


def artifacts_dir() -> Path:
    """Where tests leave what a person should look at: $PREFKIT_ARTIFACTS, else tests/artifacts."""
    path = Path(os.environ.get("PREFKIT_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Server:
    """``prefkit annotate DATASET --port 0 ...`` in a subprocess; waits for the address it prints."""

    def __init__(self, dataset: Path, *args: str, timeout: float = 90):
        cmd = [sys.executable, "-m", "prefkit.cli.main", "annotate", str(dataset), "--port", "0", *args]
        env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = None
        self.token = None
        self.secrets: dict[str, str] = {}  # annotator -> the secret /api/claim gave this test client
        deadline = time.monotonic() + timeout
        while self.port is None:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"no address after {timeout} s:\n{''.join(self.output)}") from None
            if line is None:
                raise AssertionError(f"the server exited ({self.proc.wait()}):\n{''.join(self.output)}")
            m = URL_LINE.search(line)
            if m:
                self.port = int(m.group(2))
                self.token = m.group(4)

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def connection(self, timeout: float = 30, source: str | None = None) -> http.client.HTTPConnection:
        """A connection to 127.0.0.1; ``source``: the client address (any 127.x.y.z is loopback too), so a
        test can be several clients."""
        address = (source, 0) if source else None
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout, source_address=address)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        token: bool = True,
        raw: bytes | None = None,
        source: str | None = None,
        secret: bool = True,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection; the path goes out exactly as given (no normalisation).
        A JSON body naming an annotator this client claimed goes with that annotator's secret, unless
        ``secret`` is False or ``headers`` has its own X-Prefkit-Secret."""
        conn = self.connection(source=source)
        hdrs = dict(headers or {})
        if token and self.token and "Authorization" not in hdrs:
            hdrs["Authorization"] = f"Bearer {self.token}"
        if secret and isinstance(body, dict) and body.get("annotator") in self.secrets:
            hdrs.setdefault("X-Prefkit-Secret", self.secrets[body["annotator"]])
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=hdrs)
            res = conn.getresponse()
            return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, expect: int = 200, **kw) -> dict[str, Any]:
        status, _, data = self.request(method, path, body, **kw)
        assert status == expect, (status, data)
        return json.loads(data)

    def claim(self, annotator: str, **kw) -> str:
        """POST /api/claim: the name's secret, kept for this client's later requests."""
        secret = self.json("POST", "/api/claim", {"annotator": annotator}, **kw)["secret"]
        self.secrets[annotator] = secret
        return secret

    def next(self, annotator: str, exclude: list[str] = (), expect: int = 200, **kw) -> dict[str, Any]:
        """POST /api/next as ``annotator`` (claimed first if this client has not yet)."""
        if annotator not in self.secrets:
            self.claim(annotator, **{k: v for k, v in kw.items() if k == "source"})
        body = {"annotator": annotator, "exclude": list(exclude)}
        return self.json("POST", "/api/next", body, expect=expect, **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def db_rows(dataset: Path) -> list[dict[str, Any]]:
    """Every row of DATASET/annotations.sqlite, read-only (works while the server writes)."""
    conn = sqlite3.connect(f"file:{dataset / 'annotations.sqlite'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM votes ORDER BY id")]
    finally:
        conn.close()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (a real disk that fills up), or None where mounting is not
    allowed (not root, or no CAP_SYS_ADMIN in a container). Lazily unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if res.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(folder: Path) -> Path:
    """Write a file in ``folder`` until its file system has no space left; returns the file."""
    filler = folder / "filler.bin"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler
