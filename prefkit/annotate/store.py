"""The vote store of ``prefkit annotate``: SQLite in the dataset folder, and which pair to show whom.

``DATASET/annotations.sqlite`` has one row per decision in table ``votes``::

    vote_id     the page's id for the decision (random, made in the browser); UNIQUE, so a POST retried
                after a lost answer stores nothing twice
    annotator   the name the annotator typed
    key_0/key_1 the pair in canonical order (key_0 < key_1, as in label sets)
    choice      "0" (key_0 won), "1" (key_1 won), "tie", or "skip" (recorded, never counted as a vote)
    left_key    the sample the page showed on the left (sides are drawn at random per pair)
    time_ms     time from showing the pair to the decision, in milliseconds
    created_at  UTC, ISO 8601
    undone_at   set when the annotator pressed undo; the row stays (history), it no longer counts
    question    the question the page asked (``--question``)
    guidelines_sha256  the SHA-256 of the guidelines file the page showed (``--guidelines``), or NULL

Table ``guidelines`` keeps each guidelines text once (sha256, text, created_at), so a vote's hash can be
read back as the text the annotator saw.

The question a store's votes were given under is fixed: a store with votes (not undone) under another
question is refused at start-up unless ``force_question`` (then each vote keeps its own question). Version
1 stores (from before the question was recorded) are upgraded in place when a server opens them: their
votes get :data:`~prefkit.config.DEFAULT_QUESTION`, which is what the page asked then.

A partial UNIQUE index allows one decision per (annotator, pair) that is not undone: an annotator never
decides a pair twice, whatever the page sends.

Durability: WAL journal with ``synchronous=FULL``, each decision its own transaction, committed before the
page gets its answer. A committed transaction is in the WAL file when ``commit`` returns, so a SIGKILL of
the server loses nothing acknowledged (``NORMAL`` would give that too, in WAL mode); ``FULL`` also fsyncs
the WAL at each commit, so an acknowledged vote survives an OS crash or a power cut, for a cost of one
fsync per vote (the load test's votes/s include it).

Assignment (:meth:`VoteStore.next_pair`): pairs in a fixed order (a seeded shuffle, so consecutive pairs
come from different prompts); an annotator gets the pair they already hold, else the first pair that
they have not decided (voted or skipped) and whose votes plus other annotators' unexpired leases are
fewer than ``per_pair``. A lease lasts ``lease_s`` seconds: annotators working at once do not all get
the same pair, and a pair an annotator walked away from goes back to the pool. A vote arriving after its
lease expired is still stored (a pair may then get one vote more than ``per_pair``).

Limits on leases (a lease is what a hostile client would hoard): an annotator holds at most
``LEASES_PER_ANNOTATOR`` pairs handed out by :meth:`VoteStore.next_pair` (the page shows one and loads the
next; asking for a third releases their oldest), and one client address at most ``client_leases`` over all
its annotators (default :func:`default_client_leases`: 20, fewer on a small dataset); past that
:meth:`VoteStore.next_pair` raises :class:`Busy` (HTTP 429) and leases nothing. An address may also claim
at most ``NAMES_PER_CLIENT`` new annotator names per hour (each is a row in the database).

Annotator names are bound to a secret (table ``annotators``: the name, the SHA-256 of the secret): the first
:meth:`VoteStore.claim` of a name makes a random secret and hands it out once; the page keeps it and sends
it with every request, and only its holder can ask for pairs, vote or undo as that name (the app checks it
with :meth:`VoteStore.owns`). A name that has votes from before the table existed is claimed by whoever
asks first.

Write failures (a full disk, a read-only file system, an I/O error) raise :class:`StorageError` with a
message that says what happened to the decision and what to do; nothing in memory changes.

The counts used for assignment live in memory, rebuilt from the database at start-up and changed only
after a commit succeeded, under one lock: one server per dataset (``serve.py`` holds a lock file).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import re
import secrets
import sqlite3
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.config import DEFAULT_QUESTION
from prefkit.errors import PrefkitError
from prefkit.fileio import utc_timestamp

DB_NAME = "annotations.sqlite"
FORMAT = "prefkit-annotations"
VERSION = "2"  # 2: votes record the question and guidelines; 1 is read, and upgraded by a server
READABLE_VERSIONS = ("1", VERSION)
DECISIONS = ("0", "1", "tie", "skip")
VOTE_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
LEASES_PER_ANNOTATOR = 2  # the pair on the page and the one it loads ahead
NAMES_PER_CLIENT = 30  # new annotator names one client address may claim per NAME_WINDOW_S
NAME_WINDOW_S = 3600.0

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO info (key, value) VALUES ('format', '{FORMAT}'), ('version', '{VERSION}');
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vote_id TEXT NOT NULL UNIQUE,
    annotator TEXT NOT NULL,
    key_0 TEXT NOT NULL,
    key_1 TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('0', '1', 'tie', 'skip')),
    left_key TEXT NOT NULL,
    time_ms INTEGER CHECK (time_ms IS NULL OR time_ms >= 0),
    created_at TEXT NOT NULL,
    undone_at TEXT,
    question TEXT NOT NULL,
    guidelines_sha256 TEXT,
    CHECK (key_0 < key_1),
    CHECK (left_key IN (key_0, key_1))
);
CREATE UNIQUE INDEX IF NOT EXISTS one_decision_per_pair ON votes (annotator, key_0, key_1)
    WHERE undone_at IS NULL;
CREATE INDEX IF NOT EXISTS by_annotator ON votes (annotator, id);
CREATE TABLE IF NOT EXISTS annotators (
    name TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS guidelines (
    sha256 TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""

PairKey = tuple[str, str]  # (key_0, key_1), key_0 < key_1


class Conflict(Exception):
    """A well-formed request the store refuses (HTTP 409): the message says why."""


class NotFound(Exception):
    """A request naming a vote or pair that does not exist (HTTP 404)."""


class Busy(Exception):
    """A client over its limit of leases or new names (HTTP 429): the message says which and what to do."""


class StorageError(Exception):
    """The database could not be written (``status``: 507 disk full, 503 read-only or I/O error)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class Lease:
    expiry: float  # on the store's clock
    client: str  # the address that asked for it


@dataclass
class Decision:
    """One stored row, as the API and the exporter see it."""

    vote_id: str
    annotator: str
    key_0: str
    key_1: str
    choice: str
    left_key: str
    time_ms: int | None
    created_at: str
    undone_at: str | None
    question: str = DEFAULT_QUESTION
    guidelines_sha256: str | None = None

    @property
    def pair(self) -> PairKey:
        return (self.key_0, self.key_1)


_COLUMNS = "vote_id, annotator, key_0, key_1, choice, left_key, time_ms, created_at, undone_at"


def canonical_choice(left: str, right: str, side: str) -> tuple[PairKey, str]:
    """The page's (left, right, side chosen) -> ((key_0, key_1), choice in canonical order).

    side: "left", "right", "tie" or "skip". Choosing the left image means key_0 won when the left image
    is key_0, and key_1 won when the page had swapped them.
    """
    pair = (left, right) if left < right else (right, left)
    if side in ("tie", "skip"):
        return pair, side
    winner = left if side == "left" else right
    return pair, "0" if winner == pair[0] else "1"


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection to an annotations database, checked to be one. ``readonly`` for exporters: a plain
    connection (it can replay the WAL after a killed server) that refuses writes."""
    path = Path(path)
    if readonly and not path.is_file():
        raise PrefkitError(f"{path}: no such annotations database")
    conn = None
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        # checked before anything is written: a database of something else is left as it is
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        info = dict(conn.execute("SELECT key, value FROM info").fetchall()) if "info" in tables else {}
        if tables or readonly:
            _check_info(path, info)
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise PrefkitError(
                    f"{path}: SQLite refused WAL mode (got {mode!r}); put the dataset on a local disk"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(SCHEMA)
            _upgrade(conn)
    except (sqlite3.DatabaseError, PrefkitError) as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, PrefkitError):
            raise
        problem = storage_problem(path, exc)
        if problem is not None:
            raise PrefkitError(f"{path}: {problem[0]}") from None
        raise PrefkitError(
            f"{path}: not a prefkit annotations database ({exc}); move it away or choose another dataset"
        ) from None
    return conn


# SQLite's primary result codes (the low byte of sqlite_errorcode, Python 3.11+)
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 8, 10, 13, 14
LOW_SPACE = 1 << 20  # bytes free under which an I/O error is taken for a full disk


def _fs_state(folder: Path) -> tuple[int | None, bool]:
    """(bytes free to this user, read-only mount) of the file system holding ``folder``."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None, False
    return st.f_bavail * st.f_frsize, bool(st.f_flag & os.ST_RDONLY)


def storage_problem(path: Path, exc: sqlite3.Error) -> tuple[str, int] | None:
    """What the disk or file system did to an SQLite call, said for a person, with the HTTP status the
    server answers (507 full, 503 otherwise); None when the failure is about the file's content.

    SQLite reports a full disk as SQLITE_FULL on most writes but as a plain I/O error when it cannot grow its
    shared-memory file, so an I/O error on a nearly full file system (under ``LOW_SPACE`` free) is a full
    disk too. A read-only mount or file shows up as SQLITE_READONLY or as "unable to open" (the WAL files
    cannot be created)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(exc).lower()
    folder = path.parent
    free, ro_mount = _fs_state(folder)
    io_like = code in (_SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_READONLY) or any(
        t in text for t in ("disk is full", "disk i/o error", "unable to open", "readonly")
    )
    if not io_like:
        return None
    if (
        code == _SQLITE_FULL
        or "disk is full" in text
        or (free is not None and free < LOW_SPACE and not ro_mount)
    ):
        shown = "unknown" if free is None else f"{free:,} bytes"
        return (
            f"the disk is full (free on the file system of {folder}: {shown}; SQLite: {exc}); free some space "
            "there, or move the dataset to a disk with room, and start again: the votes so far are intact",
            507,
        )
    writable = os.access(folder, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
    if code == _SQLITE_READONLY or "readonly" in text or ro_mount or not writable:
        where = "a read-only file system" if ro_mount else "read-only (permissions)"
        return (
            f"cannot write: {folder} is on {where} (SQLite: {exc}); make it writable, or copy the dataset "
            "to a writable place and annotate the copy",
            503,
        )
    if code == _SQLITE_CANTOPEN or "unable to open" in text:
        return (f"cannot open or create the database (SQLite: {exc}); check that {folder} is writable", 503)
    return (f"I/O error (SQLite: {exc}); check the disk (dmesg), then start again", 503)


def _check_info(path: Path, info: dict[str, str]) -> None:
    if info.get("format") != FORMAT:
        raise PrefkitError(
            f"{path}: not a prefkit annotations database (no info.format {FORMAT!r}); move it away"
        )
    if info.get("version") not in READABLE_VERSIONS:
        raise PrefkitError(
            f"{path}: annotations database version {info.get('version')!r}; this prefkit reads "
            f"{' and '.join(repr(v) for v in READABLE_VERSIONS)} (a newer prefkit wrote it?)"
        )


def _upgrade(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2 in one transaction: the votes get their question (the default, what the page asked
    then) and an empty guidelines hash."""
    if conn.execute("SELECT value FROM info WHERE key = 'version'").fetchone()[0] == VERSION:
        return
    quoted = DEFAULT_QUESTION.replace("'", "''")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "question" not in _vote_columns(conn):
            conn.execute(f"ALTER TABLE votes ADD COLUMN question TEXT NOT NULL DEFAULT '{quoted}'")
            conn.execute("ALTER TABLE votes ADD COLUMN guidelines_sha256 TEXT")
        conn.execute("UPDATE info SET value = ? WHERE key = 'version'", (VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _vote_columns(conn: sqlite3.Connection) -> set[str]:
    return {row[1] for row in conn.execute("PRAGMA table_info(votes)")}


def _instruction_rows(conn: sqlite3.Connection, where: str) -> list[tuple[str, str | None, int]]:
    """(question, guidelines_sha256, rows) of the votes matching ``where``, in the order first used."""
    if "question" not in _vote_columns(conn):  # a version 1 store, read as it is
        n = conn.execute(f"SELECT COUNT(*) FROM votes WHERE {where}").fetchone()[0]
        return [(DEFAULT_QUESTION, None, n)] if n else []
    return conn.execute(
        f"SELECT question, guidelines_sha256, COUNT(*) FROM votes WHERE {where} "
        "GROUP BY question, guidelines_sha256 ORDER BY MIN(id)"
    ).fetchall()


def read_instructions(path: Path) -> list[dict[str, Any]]:
    """What the votes of an annotations database were asked under, for a label set's meta: one record per
    (question, guidelines) with the number of votes (not undone, not skipped), in the order first used."""
    conn = connect(path, readonly=True)
    try:
        rows = _instruction_rows(conn, "undone_at IS NULL AND choice != 'skip'")
    finally:
        conn.close()
    return [{"question": q, "guidelines_sha256": g, "votes": n} for q, g, n in rows]


def read_decisions(path: Path) -> list[Decision]:
    """Every row of an annotations database, undone ones and skips included, in the order stored."""
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM votes ORDER BY id").fetchall()
    finally:
        conn.close()
    return [Decision(*row) for row in rows]


def default_client_leases(places: int) -> int:
    """The default cap of pairs one client address holds at once: 20, but at most a quarter of the places
    (pairs x per-pair) so that one client never holds most of a small dataset; at least 4, what two pages
    (two annotators on one machine) need."""
    return min(20, max(4, places // 4))


class VoteStore:
    """The server's view of the database: decisions, undo, and which pair to hand out next.

    ``pairs``: the pairs to annotate (canonical order). ``client_leases``: the most pairs one client address
    may hold at once, over all its annotators (None: :func:`default_client_leases`). ``question`` and
    ``guidelines`` (the Markdown text): what the page shows, recorded with each vote; a store with votes
    under another question is a PrefkitError unless ``force_question``. Thread-safe: one lock around every
    operation.
    """

    def __init__(
        self,
        path: Path,
        pairs: list[PairKey],
        per_pair: int = 1,
        lease_s: float = 300.0,
        seed: int = 0,
        clock=time.monotonic,
        client_leases: int | None = None,
        question: str = DEFAULT_QUESTION,
        guidelines: str | None = None,
        force_question: bool = False,
    ):
        if per_pair < 1:
            raise PrefkitError(f"--per-pair {per_pair}: must be at least 1")
        if lease_s <= 0:
            raise PrefkitError(f"--lease {lease_s}: must be > 0 seconds")
        if client_leases is None:
            client_leases = default_client_leases(len(pairs) * per_pair)
        if client_leases < 1:
            raise PrefkitError(f"--client-leases {client_leases}: must be at least 1")
        self.path = Path(path)
        self.per_pair = per_pair
        self.lease_s = lease_s
        self.clock = clock
        self.client_leases = client_leases
        self.lock = threading.Lock()
        self.pairs = list(pairs)
        random.Random(seed).shuffle(self.pairs)
        self.known = set(self.pairs)
        self.side = random.SystemRandom()
        self.question = question
        self.guidelines_sha256 = (
            None if guidelines is None else hashlib.sha256(guidelines.encode()).hexdigest()
        )
        self.conn = connect(self.path)
        try:
            self._check_question(force_question)
            if guidelines is not None:
                self._write(
                    "INSERT OR IGNORE INTO guidelines (sha256, text, created_at) VALUES (?, ?, ?)",
                    (self.guidelines_sha256, guidelines, utc_timestamp(ms=True)),
                )
        except (PrefkitError, StorageError) as exc:
            self.conn.close()
            raise PrefkitError(str(exc)) from None
        # derived state, rebuilt from the database
        self.votes_on: Counter[PairKey] = Counter()  # active votes per pair (skips not counted)
        self.decided: dict[str, set[PairKey]] = {}  # annotator -> pairs voted or skipped (not undone)
        self.leases: dict[PairKey, dict[str, Lease]] = {}  # pair -> annotator -> lease
        self.new_names: dict[str, deque[float]] = {}  # client address -> clock times of its claims
        self.secrets: dict[str, str] = dict(  # annotator -> SHA-256 of their secret (hex)
            self.conn.execute("SELECT name, secret_sha256 FROM annotators")
        )
        for _vote_id, annotator, k0, k1, choice, *_rest in self.conn.execute(
            f"SELECT {_COLUMNS} FROM votes WHERE undone_at IS NULL"
        ):
            self._count(annotator, (k0, k1), choice, +1)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def _check_question(self, force: bool) -> None:
        others = [r for r in self.instructions() if r["question"] != self.question]
        if not others or force:
            return
        n = sum(r["decisions"] for r in others)
        shown = "; ".join(sorted({repr(r["question"]) for r in others}))
        raise PrefkitError(
            f"{self.path} has {n} decision(s) under another question ({shown}), not {self.question!r}: "
            "votes to different questions measure different things. Export them first (--export NAME), then "
            "annotate a copy of the dataset without annotations.sqlite, or ask the same --question again; "
            "--force-question stores new votes under the new question (each vote keeps its own)"
        )

    def instructions(self) -> list[dict[str, Any]]:
        """The (question, guidelines_sha256, decisions) of the decisions not undone (skips included), in
        the order first used."""
        rows = _instruction_rows(self.conn, "undone_at IS NULL")
        return [{"question": q, "guidelines_sha256": g, "decisions": n} for q, g, n in rows]

    # -- reading ------------------------------------------------------------------------------------

    def _count(self, annotator: str, pair: PairKey, choice: str, sign: int) -> None:
        mine = self.decided.setdefault(annotator, set())
        if sign > 0:
            mine.add(pair)
        else:
            mine.discard(pair)
        if choice != "skip":
            self.votes_on[pair] += sign

    def _row(self, vote_id: str) -> Decision | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM votes WHERE vote_id = ?", (vote_id,)).fetchone()
        return Decision(*row) if row else None

    def _last_vote_id(self, annotator: str) -> str | None:
        row = self.conn.execute(
            "SELECT vote_id FROM votes WHERE annotator = ? AND undone_at IS NULL ORDER BY id DESC LIMIT 1",
            (annotator,),
        ).fetchone()
        return row[0] if row else None

    def _progress(self, annotator: str) -> dict[str, int]:
        mine = self.decided.get(annotator, set())
        todo = sum(1 for p in self.pairs if p not in mine and self.votes_on[p] < self.per_pair)
        return {
            "done": len(mine),
            "todo": todo,
            "votes": sum(min(self.votes_on[p], self.per_pair) for p in self.pairs),
            "target": len(self.pairs) * self.per_pair,
            "pairs": len(self.pairs),
            "per_pair": self.per_pair,
        }

    def status(self) -> dict[str, Any]:
        with self.lock:
            row = self.conn.execute(
                "SELECT COUNT(*), SUM(choice != 'skip'), COUNT(DISTINCT annotator) FROM votes "
                "WHERE undone_at IS NULL"
            ).fetchone()
            return {
                "pairs": len(self.pairs),
                "per_pair": self.per_pair,
                "decisions": row[0],
                "votes": row[1] or 0,
                "annotators": row[2],
                "question": self.question,
                "guidelines_sha256": self.guidelines_sha256,
            }

    # -- assignment ---------------------------------------------------------------------------------

    def _purge(self, now: float) -> None:
        for pair in list(self.leases):
            held = self.leases[pair]
            for who in [w for w, lease in held.items() if lease.expiry <= now]:
                del held[who]
            if not held:
                del self.leases[pair]

    def _others_leases(self, pair: PairKey, annotator: str) -> int:
        return sum(1 for who in self.leases.get(pair, {}) if who != annotator)

    def _lease(self, pair: PairKey, annotator: str, now: float, client: str) -> None:
        self.leases.setdefault(pair, {})[annotator] = Lease(now + self.lease_s, client)

    def _client_leases(self, client: str, now: float) -> int:
        return sum(
            1
            for who in self.leases.values()
            for lease in who.values()
            if lease.client == client and lease.expiry > now
        )

    def _release(self, pair: PairKey, annotator: str) -> None:
        held = self.leases.get(pair)
        if held:
            held.pop(annotator, None)

    def next_pair(
        self, annotator: str, exclude: set[PairKey] = frozenset(), client: str = ""
    ) -> dict[str, Any]:
        """The pair to show ``annotator`` next (leased to them), or None; with progress and the id of
        their last decision (what undo would take back). ``exclude``: pairs the page already holds.
        ``client``: the address asking; Busy when it holds ``client_leases`` pairs and would need another."""
        with self.lock:
            now = self.clock()
            self._purge(now)
            mine = self.decided.get(annotator, set())
            order = {p: i for i, p in enumerate(self.pairs)}
            held = [p for p, who in self.leases.items() if annotator in who and p not in mine]
            usable = [p for p in held if p not in exclude]
            chosen = min(usable, key=lambda p: order.get(p, len(order))) if usable else None
            if chosen is None:
                for p in self.pairs:
                    if p in mine or p in exclude:
                        continue
                    if self.votes_on[p] + self._others_leases(p, annotator) < self.per_pair:
                        chosen = p
                        break
                if chosen is not None:
                    # a new lease: the annotator lets go of their oldest beyond the page's two
                    oldest = sorted(held, key=lambda p: self.leases[p][annotator].expiry)
                    let_go = oldest[: max(0, len(held) - LEASES_PER_ANNOTATOR + 1)]
                    by_client = self._client_leases(client, now)
                    by_client -= sum(1 for p in let_go if self.leases[p][annotator].client == client)
                    if by_client >= self.client_leases:
                        raise Busy(
                            f"this address ({client or 'local'}) already holds {by_client} pairs for its "
                            f"annotators (the limit, --client-leases {self.client_leases}): finish those, "
                            f"or wait until they are handed back ({self.lease_s:g} s after they were given)"
                        )
                    for p in let_go:
                        self._release(p, annotator)
            if chosen is not None:
                self._lease(chosen, annotator, now, client)
            left = None if chosen is None else chosen[self.side.randrange(2)]
            return {
                "pair": chosen,
                "left": left,
                "progress": self._progress(annotator),
                "last_vote_id": self._last_vote_id(annotator),
            }

    # -- annotators ---------------------------------------------------------------------------------

    def claim(self, annotator: str, client: str = "") -> str:
        """Bind the new name ``annotator`` to a fresh random secret and return it (the only time it is
        shown). Conflict when the name is taken; Busy when ``client`` claimed ``NAMES_PER_CLIENT`` names in
        the last hour."""
        with self.lock:
            if annotator in self.secrets:
                raise Conflict(
                    f"the name {annotator!r} is already in use in another browser: choose another name "
                    "(or go back to the browser where you started)"
                )
            now = self.clock()
            recent = self.new_names.setdefault(client, deque())
            while recent and recent[0] <= now - NAME_WINDOW_S:
                recent.popleft()
            if len(recent) >= NAMES_PER_CLIENT:
                raise Busy(
                    f"this address ({client or 'local'}) claimed {len(recent)} new names in the last hour, "
                    "the most it may: keep using one of them"
                )
            secret = secrets.token_urlsafe(32)
            digest = hashlib.sha256(secret.encode()).hexdigest()
            self._write(
                "INSERT INTO annotators (name, secret_sha256, created_at) VALUES (?, ?, ?)",
                (annotator, digest, utc_timestamp(ms=True)),
            )
            self.secrets[annotator] = digest
            recent.append(now)
            return secret

    def owns(self, annotator: str, secret: str | None) -> bool:
        """Whether ``secret`` is the one handed out for ``annotator`` (compared in constant time)."""
        digest = self.secrets.get(annotator)
        if digest is None or not secret:
            return False
        return hmac.compare_digest(hashlib.sha256(secret.encode()).hexdigest(), digest)

    def _write(self, sql: str, params: tuple) -> None:
        """One autocommitted statement; a failure of the disk or file system becomes StorageError."""
        try:
            self.conn.execute(sql, params)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            if self.conn.in_transaction:  # SQLite may leave a failed statement's transaction open
                self.conn.execute("ROLLBACK")
            problem = storage_problem(self.path, exc)
            if problem is None:
                raise
            raise StorageError(f"{self.path}: {problem[0]}", problem[1]) from None

    # -- writing ------------------------------------------------------------------------------------

    def decide(
        self, vote_id: str, annotator: str, left: str, right: str, side: str, time_ms: int | None
    ) -> dict[str, Any]:
        """Store one decision (committed before returning). A retry with the same ``vote_id`` and the same
        content returns the first answer with ``duplicate`` true; different content is a Conflict."""
        pair, choice = canonical_choice(left, right, side)
        if pair not in self.known:
            raise NotFound(f"unknown pair ({left}, {right}): not a pair of this dataset's prompt groups")
        with self.lock:
            old = self._row(vote_id)
            if old is not None:
                same = (old.annotator, old.pair, old.choice, old.left_key) == (annotator, pair, choice, left)
                if not same:
                    raise Conflict(f"vote id {vote_id} was already used for a different decision")
                return self._ack(old, duplicate=True)
            if pair in self.decided.get(annotator, set()):
                raise Conflict(
                    f"annotator {annotator!r} has already decided pair ({pair[0]}, {pair[1]}); undo it first"
                )
            created = utc_timestamp(ms=True)
            row = Decision(
                vote_id,
                annotator,
                *pair,
                choice,
                left,
                time_ms,
                created,
                None,
                self.question,
                self.guidelines_sha256,
            )
            try:
                self._write(
                    f"INSERT INTO votes ({_COLUMNS}, question, guidelines_sha256) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.vote_id,
                        annotator,
                        *pair,
                        choice,
                        left,
                        time_ms,
                        row.created_at,
                        None,
                        self.question,
                        self.guidelines_sha256,
                    ),
                )  # autocommit: the INSERT is its own transaction, durable when execute returns
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"refused by the database: {exc}") from None
            self._count(annotator, pair, choice, +1)
            self._release(pair, annotator)
            return self._ack(row, duplicate=False)

    def _ack(self, row: Decision, duplicate: bool) -> dict[str, Any]:
        return {
            "saved": True,
            "duplicate": duplicate,
            "vote_id": row.vote_id,
            "key_0": row.key_0,
            "key_1": row.key_1,
            "choice": row.choice,
            "left": row.left_key,
            "progress": self._progress(row.annotator),
        }

    def undo(self, annotator: str, vote_id: str, client: str = "") -> dict[str, Any]:
        """Take back one of ``annotator``'s decisions (the page sends its last one). Idempotent: undoing an
        undone decision answers the same. The pair is leased to the annotator again (if ``client`` is under
        its cap), to be shown again."""
        with self.lock:
            row = self._row(vote_id)
            if row is None or row.annotator != annotator:
                raise NotFound(f"annotator {annotator!r} has no decision {vote_id}")
            if row.undone_at is None:
                self._write(
                    "UPDATE votes SET undone_at = ? WHERE vote_id = ? AND undone_at IS NULL",
                    (utc_timestamp(ms=True), vote_id),
                )
                self._count(annotator, row.pair, row.choice, -1)
            now = self.clock()
            # held for the undoer to decide again, within their address's cap (else it is only shown: a
            # vote without a lease is stored all the same), so vote + undo cannot hoard pairs either
            if row.pair in self.known and self._client_leases(client, now) < self.client_leases:
                self._lease(row.pair, annotator, now, client)
            return {
                "undone": vote_id,
                "pair": row.pair,
                "left": row.left_key,
                "progress": self._progress(annotator),
                "last_vote_id": self._last_vote_id(annotator),
            }
