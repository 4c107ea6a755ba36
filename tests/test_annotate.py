"""prefkit annotate: the vote store, the real server over loopback (security, API, export), a load test
with a SIGKILL of the server under load. The browser test is tests/test_annotate_browser.py."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from annotate_util import ROOT, Server, artifacts_dir, db_rows, fill_disk, small_tmpfs

from prefkit.annotate.store import Conflict, NotFound, StorageError, VoteStore, canonical_choice
from prefkit.errors import PrefkitError
from prefkit.label_sets import read_meta, read_pairs


def vid() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def dataset(labelled_dataset, tmp_path) -> Path:
    """A private copy of the shared 3 prompts x 3 samples dataset (9 pairs; it has a jpeg label set)."""
    out = tmp_path / "ds"
    shutil.copytree(labelled_dataset, out)
    return out


@pytest.fixture(scope="module")
def load_dataset(tiny_models, tmp_path_factory) -> Path:
    """4 prompts x 12 samples: 4 x C(12, 2) = 264 pairs, 2,112 votes with --per-pair 8."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    out = tmp_path_factory.mktemp("annotate-load") / "ds"
    args = ["generate", "--out", str(out), "--model", tiny_models["sd3"], "--samples-per-prompt", "12"]
    args += ["--steps", "2", "--height", "16", "--width", "16", "--batch-size", "16", "--quiet"]
    for p in ["a cat", "a dog", "a red car", "a house"]:
        args += ["--prompt", p]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command in a subprocess (a command that wrongly started serving would time out)."""
    return subprocess.run(
        [sys.executable, "-m", "prefkit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )


# -- the store, in process ------------------------------------------------------------------------------


def test_canonical_choice_maps_the_pages_sides_back():
    a, b = "g00000000_s00", "g00000000_s01"
    assert canonical_choice(a, b, "left") == ((a, b), "0")
    assert canonical_choice(a, b, "right") == ((a, b), "1")
    assert canonical_choice(b, a, "left") == ((a, b), "1")  # the page showed key_1 on the left
    assert canonical_choice(b, a, "right") == ((a, b), "0")
    assert canonical_choice(b, a, "tie") == ((a, b), "tie")
    assert canonical_choice(b, a, "skip") == ((a, b), "skip")


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_assignment_leases_skips_undo(tmp_path):
    pairs = [(f"g0_s{i}", f"g0_s{j}") for i in range(4) for j in range(i + 1, 4)]  # 6 pairs
    clock = Clock()
    # every annotator here is the same client (in process): no per-client cap in this test
    store = VoteStore(tmp_path / "a.sqlite", pairs, per_pair=2, lease_s=60, clock=clock, client_leases=99)
    # three annotators at once: a pair is held for at most per_pair of them
    got = {who: store.next_pair(who)["pair"] for who in "ABC"}
    assert got["A"] == got["B"] != got["C"]
    assert store.next_pair("A")["pair"] == got["A"]  # asking again (a reload) gives the held pair
    p = got["A"]
    # A votes, B skips: the skip is recorded and not a vote, so a third annotator may get the pair
    store.decide(vid(), "A", p[1], p[0], "left", 1200)
    skip_id = vid()
    store.decide(skip_id, "B", p[0], p[1], "skip", 300)
    assert store.votes_on[p] == 1
    assert store.next_pair("D")["pair"] == p
    with pytest.raises(Conflict, match="already decided"):
        store.decide(vid(), "B", p[0], p[1], "tie", 5)
    # undo gives the pair back to B, then B may decide it
    res = store.undo("B", skip_id)
    assert res["pair"] == p and res["left"] == p[0]
    assert store.next_pair("B")["pair"] == p
    store.decide(vid(), "B", p[0], p[1], "tie", 10)
    assert store.votes_on[p] == 2
    with pytest.raises(NotFound):
        store.undo("A", skip_id)  # not A's decision
    # C walks away; once C's lease expires, another annotator gets C's place
    c_pair = got["C"]
    clock.t = 30
    assert store.next_pair("E")["pair"] == c_pair  # the second place
    assert store.next_pair("F")["pair"] != c_pair  # both places held
    clock.t = 61  # C's lease is over, E's (until 90) is not
    assert store.next_pair("G")["pair"] == c_pair
    assert store.next_pair("F")["pair"] != c_pair
    # an annotator never gets a pair twice, nor a full one (p: 2 votes; c_pair: E and G); then None
    seen = []
    while (res := store.next_pair("H"))["pair"] is not None:
        q = res["pair"]
        assert q not in seen
        seen.append(q)
        store.decide(vid(), "H", q[0], q[1], "right", 1)
    assert set(seen) == set(pairs) - {p, c_pair}
    assert res["progress"]["done"] == 4 and res["progress"]["todo"] == 1  # c_pair, once E and G let go
    store.close()
    # a restart rebuilds the counts from the database
    again = VoteStore(tmp_path / "a.sqlite", pairs, per_pair=2, lease_s=60)
    assert again.votes_on[p] == 2 and again.decided["B"] == {p} and len(again.decided["H"]) == 4
    again.close()


def test_leases_are_capped_per_annotator_and_client_vote_and_undo_included(tmp_path):
    from prefkit.annotate.store import Busy

    pairs = [(f"g0_s{i}", f"g0_s{j}") for i in range(4) for j in range(i + 1, 4)]  # 6 pairs
    store = VoteStore(tmp_path / "a.sqlite", pairs, client_leases=3)

    def leased(client: str) -> int:
        return sum(1 for who in store.leases.values() for lease in who.values() if lease.client == client)

    # one name asking for ever new pairs holds 2: each new one lets go of its oldest
    got = []
    for _ in range(6):
        got.append(store.next_pair("x", exclude=set(got), client="c")["pair"])
    assert len(set(got)) == 6 and leased("c") == 2
    # a second name of the same client: up to the client's 3, then Busy, nothing leased
    store.next_pair("y", client="c")
    with pytest.raises(Busy, match="already holds 3 pairs"):
        store.next_pair("z", client="c")
    assert leased("c") == 3 and "z" not in {w for who in store.leases.values() for w in who}
    # vote on everything, then undo all: the undone pairs come back within the cap only
    ids = []
    while (pair := store.next_pair("x", client="c")["pair"]) is not None:
        ids.append(vid())
        store.decide(ids[-1], "x", pair[0], pair[1], "left", 1)
    for vote_id in ids:
        store.undo("x", vote_id, client="c")
    assert len(ids) == 5 and leased("c") == 3
    # another client still gets every pair nobody holds
    free = []
    while (pair := store.next_pair("w", exclude=set(free), client="d")["pair"]) is not None:
        free.append(pair)
    assert len(free) == 3
    store.close()


def test_store_refuses_foreign_database(tmp_path):
    import sqlite3

    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE info (key TEXT, value TEXT)")
    with pytest.raises(PrefkitError, match="not a prefkit annotations database"):
        VoteStore(path, [("a", "b")])
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(PrefkitError, match="not a prefkit annotations database"):
        VoteStore(path, [("a", "b")])


# -- the server ------------------------------------------------------------------------------------------


def first_pair(server: Server, annotator: str = "ann") -> dict:
    return server.next(annotator)["pair"]


def test_only_the_datasets_images_are_served(dataset):
    with Server(dataset) as server:
        pair = first_pair(server)
        status, headers, data = server.request("GET", pair["left_url"])
        assert status == 200 and headers["content-type"] == "image/png"
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert "immutable" in headers["cache-control"]
        # http.client sends these paths as written: no client-side normalisation of `..`
        for path in [
            "/image/../manifest.json",
            "/image/..%2Fmanifest.json",
            "/image/%2e%2e%2fmanifest.json",
            "/image/..",
            "/image/manifest.json",
            "/image/%2Fetc%2Fpasswd",
            "/image//etc/passwd",
            "/image/g99999999_s00",
            f"/image/{pair['left']}.png",
            "/static/../../../../../../etc/passwd",
            "/static/..%2F..%2Fstore.py",
            "/static/%2Fetc%2Fpasswd",
            "/static//etc/passwd",
            "/static/store.py",
            "/static/../app.py",
            "/../manifest.json",
            "//etc/passwd",
            "/manifest.json",
            "/annotations.sqlite",
        ]:
            status, _, data = server.request("GET", path)
            assert status == 404, (path, status, data[:80])
            assert b"plan" not in data and b"root:" not in data and b"SQLite" not in data, path
        status, headers, data = server.request("GET", "/static/annotate.js")
        assert status == 200 and b"textContent" in data
        # a site pointing its own name at 127.0.0.1 (DNS rebinding) is refused on a loopback bind
        status, _, data = server.request("GET", "/", headers={"Host": f"evil.example:{server.port}"})
        assert status == 403 and b"not allowed" in data


def test_votes_are_validated_and_idempotent(dataset):
    with Server(dataset) as server:
        pair = first_pair(server)
        left, right = pair["left"], pair["right"]
        other_group = next(k for k in ("g00000001_s00", "g00000002_s00") if not k.startswith(left[:9]))
        good = {"vote_id": vid(), "annotator": "ann", "left": left, "right": right, "choice": "left"}
        good["time_ms"] = 1500
        bad = [
            (415, None, b'{"x": 1}', {"Content-Type": "text/plain"}),
            (400, None, b"{not json", None),
            (400, None, json.dumps([good]).encode(), None),
            (400, {k: v for k, v in good.items() if k != "choice"}, None, None),
            (400, {**good, "extra": 1}, None, None),
            (422, {**good, "vote_id": "short"}, None, None),
            (422, {**good, "vote_id": "a/../../b-123456"}, None, None),
            (422, {**good, "left": "g99999999_s00"}, None, None),
            (422, {**good, "left": "../manifest.json"}, None, None),
            (422, {**good, "right": left}, None, None),
            (422, {**good, "right": other_group}, None, None),
            (422, {**good, "choice": "both"}, None, None),
            (422, {**good, "choice": 1}, None, None),
            (422, {**good, "time_ms": -5}, None, None),
            (422, {**good, "time_ms": "12"}, None, None),
            (400, {**good, "annotator": ""}, None, None),
            (400, {**good, "annotator": "x" * 65}, None, None),
            (400, {**good, "annotator": "a\nb"}, None, None),
            (413, None, b'{"a": "' + b"x" * 20000 + b'"}', None),
        ]
        for status_expected, body, raw, headers in bad:
            status, _, data = server.request("POST", "/api/vote", body=body, raw=raw, headers=headers)
            assert status == status_expected, (body or raw[:40], status, data)
            assert json.loads(data)["error"], data
        status, _, _ = server.request("GET", "/api/vote")
        assert status == 405
        status, _, data = server.request("POST", "/api/next", {"exclude": []})
        assert status == 400 and b"annotator" in data
        for exclude in (["../x"], "a__b", [1], ["a__b"] * 17):
            status, _, _ = server.request("POST", "/api/next", {"annotator": "ann", "exclude": exclude})
            assert status == 400, exclude
        assert db_rows(dataset) == []  # nothing was stored

        ack = server.json("POST", "/api/vote", good)
        assert ack["saved"] and not ack["duplicate"]
        again = server.json("POST", "/api/vote", good)  # a retried POST: stored once
        assert again["duplicate"] and again["vote_id"] == ack["vote_id"]
        server.json("POST", "/api/vote", {**good, "choice": "right"}, expect=409)  # same id, other content
        server.json("POST", "/api/vote", {**good, "vote_id": vid()}, expect=409)  # the pair again
        server.json("POST", "/api/undo", {"annotator": "ann", "vote_id": vid()}, expect=404)
        server.claim("other")  # another annotator, with their own secret: not their decision
        server.json("POST", "/api/undo", {"annotator": "other", "vote_id": good["vote_id"]}, expect=404)
        rows = db_rows(dataset)
        assert len(rows) == 1 and rows[0]["vote_id"] == good["vote_id"]


def test_sides_map_back_to_canonical_order_and_undo(dataset):
    with Server(dataset) as server:
        seen_sides = set()
        expected = []
        for i, side in enumerate(["left", "right", "left", "right", "tie", "skip"]):
            pair = first_pair(server, "mapper")
            k0, k1 = sorted((pair["left"], pair["right"]))
            seen_sides.add(pair["left"] == k0)
            # force both orders whatever the draw: the server accepts the pair in either order
            left, right = (k1, k0) if i % 2 == 0 else (k0, k1)
            body = {"vote_id": vid(), "annotator": "mapper", "left": left, "right": right, "choice": side}
            ack = server.json("POST", "/api/vote", {**body, "time_ms": 100 * i})
            winner = {"left": left, "right": right}.get(side)
            choice = side if winner is None else ("0" if winner == k0 else "1")
            assert (ack["key_0"], ack["key_1"], ack["choice"]) == (k0, k1, choice)
            expected.append((body["vote_id"], k0, k1, choice, left, 100 * i))
        rows = db_rows(dataset)
        assert [
            (r["vote_id"], r["key_0"], r["key_1"], r["choice"], r["left_key"], r["time_ms"]) for r in rows
        ] == expected
        assert all(r["annotator"] == "mapper" and r["undone_at"] is None for r in rows)
        # undo the last (the skip): the row is kept, marked undone, and the pair is shown again
        nxt = server.next("mapper")
        assert nxt["last_vote_id"] == expected[-1][0]
        res = server.json("POST", "/api/undo", {"annotator": "mapper", "vote_id": expected[-1][0]})
        assert res["pair"]["pair_id"] == f"{expected[-1][1]}__{expected[-1][2]}"
        assert res["pair"]["left"] == expected[-1][4] and res["last_vote_id"] == expected[-2][0]
        assert db_rows(dataset)[-1]["undone_at"] is not None
        again = server.json("POST", "/api/undo", {"annotator": "mapper", "vote_id": expected[-1][0]})
        assert again["last_vote_id"] == expected[-2][0]  # a retried undo takes nothing more back
        assert first_pair(server, "mapper")["pair_id"] == res["pair"]["pair_id"]
        # the left/right order is drawn each time a pair is handed out: both orders come up
        sides = set()
        for _ in range(30):
            pair = first_pair(server, "sides")
            sides.add(pair["left"] < pair["right"])
        assert sides == {True, False}


def test_token_required_beyond_loopback(dataset):
    res = run_cli("annotate", str(dataset), "--host", "0.0.0.0", "--port", "0", "--token", "short")
    assert res.returncode == 2 and "at least 16" in res.stderr
    with Server(dataset, "--host", "0.0.0.0") as server:
        token = server.token
        assert token and len(token) >= 24  # generated and printed
        key = first_pair(server)["left"]
        paths = ["/", "/static/annotate.js", f"/image/{key}", "/api/status"]
        bearer = {"Authorization": "Bearer " + "x" * len(token)}
        for path in paths:
            assert server.request("GET", path, token=False)[0] == 401, path
            assert server.request("GET", path, headers=bearer)[0] == 403, path
            assert server.request("GET", path)[0] == 200, path
        ask = {"annotator": "ann", "exclude": []}
        assert server.request("POST", "/api/next", ask, token=False)[0] == 401
        assert server.request("POST", "/api/next", ask, headers=bearer)[0] == 403
        assert server.request("POST", "/api/next", ask)[0] == 200
        assert server.request("POST", "/api/claim", {"annotator": "x"}, token=False)[0] == 401
        body = {"vote_id": vid(), "annotator": "x", "left": key, "right": key, "choice": "tie", "time_ms": 1}
        assert server.request("POST", "/api/vote", body=body, token=False)[0] == 401
        assert server.request("GET", f"/api/status?token={'y' * len(token)}", token=False)[0] == 403
        # the printed address: ?token= sets an HttpOnly cookie and redirects to the bare page
        status, headers, _ = server.request("GET", f"/?token={token}", token=False)
        assert status == 303 and headers["location"] == "/"
        cookie = headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        jar = {"Cookie": cookie.split(";")[0]}
        assert server.request("GET", "/api/status", headers=jar, token=False)[0] == 200
        assert db_rows(dataset) == []
    given = "t0ken-given-on-the-command-line"
    with Server(dataset, "--host", "0.0.0.0", "--token", given) as server:
        assert server.token == given
        assert server.request("GET", "/api/status", token=False)[0] == 401
        assert server.request("GET", "/api/status")[0] == 200


def test_cli_errors(dataset, tmp_path, cli):
    # these fail before serving, so they run in process
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli(["annotate", str(empty)])
    assert res.exit_code == 2 and "no manifest" in res.stderr
    no_shards = tmp_path / "no-shards"
    no_shards.mkdir()
    shutil.copy(dataset / "manifest.json", no_shards)
    res = cli(["annotate", str(no_shards)])
    assert res.exit_code == 2 and "no finished shards" in res.stderr
    res = cli(["annotate", str(dataset), "--export", "web"])
    assert res.exit_code == 2 and "no annotations yet" in res.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        res = cli(["annotate", str(dataset), "--port", str(port)])
        assert res.exit_code == 2 and f"port {port} on 127.0.0.1 is already in use" in res.stderr
    assert not (dataset / "annotations.sqlite").exists()  # nothing written by a failed start
    with Server(dataset):
        res = run_cli("annotate", str(dataset), "--port", "0")
        assert res.returncode == 2 and "already being annotated" in res.stderr
    res = cli(["annotate", str(dataset), "--export", "web"])  # the DB exists now, without votes
    assert res.exit_code == 2 and "no votes found" in res.stderr


def test_export_is_the_human_label_import(dataset, cli):
    with Server(dataset, "--per-pair", "2", "--labels", "jpeg") as server:
        status = server.json("GET", "/api/status")
        assert status["pairs"] == len(read_pairs(dataset, "jpeg"))
        decided = {}
        for who, sides in [("ann", ["left", "right", "tie", "skip"]), ("bob", ["left", "left", "right"])]:
            for side in sides:
                pair = first_pair(server, who)
                body = {"vote_id": vid(), "annotator": who, "left": pair["left"], "right": pair["right"]}
                ack = server.json("POST", "/api/vote", {**body, "choice": side, "time_ms": 2500})
                decided[body["vote_id"]] = ack
        undone = next(v for v, a in decided.items() if a["choice"] == "tie")
        server.json("POST", "/api/undo", {"annotator": "ann", "vote_id": undone})
        # exported while the server runs (WAL: readers do not wait for the writer)
        res = cli(["annotate", str(dataset), "--export", "web"])
        assert res.exit_code == 0, res.output
        assert "label set 'web'" in res.stdout and "5 votes" in res.stdout
    res = cli(["label", str(dataset), "--source", "annotate", "--name", "web2"])
    assert res.exit_code == 0, res.output
    meta = read_meta(dataset, "web")
    assert meta["source"] == "human" and meta["kind"] == "human" and meta["format"] == "annotate"
    assert meta["inputs"] == [str(dataset / "annotations.sqlite")]
    assert meta["counts"]["votes"] == 5
    assert meta["report"]["skipped"] == 1 and meta["report"]["undone"] == 1
    assert meta["report"]["chose_left"] + meta["report"]["chose_right"] == 5
    assert meta["agreement"]["annotators"] == 2
    strip = lambda rows: [{k: v for k, v in r.items() if k != "created_at"} for r in rows]  # noqa: E731
    assert strip(read_pairs(dataset, "web")) == strip(read_pairs(dataset, "web2"))  # one code path
    votes = [v for p in read_pairs(dataset, "web") for v in p["votes"]]
    assert len(votes) == 5 and {v["lead_time_s"] for v in votes} == {2.5}
    active = {a["vote_id"]: a for v, a in decided.items() if a["choice"] != "skip" and v != undone}
    by_pair = {
        (p["key_0"], p["key_1"]): sorted(v["choice"] for v in p["votes"]) for p in read_pairs(dataset, "web")
    }
    expect: dict = {}
    for a in active.values():
        expect.setdefault((a["key_0"], a["key_1"]), []).append(a["choice"])
    assert by_pair == {k: sorted(v) for k, v in expect.items()}
    res = cli(["annotate", str(dataset), "--export", "web"])
    assert res.exit_code == 2 and "exists" in res.stderr
    assert cli(["annotate", str(dataset), "--export", "web", "--overwrite", "-q"]).exit_code == 0


# -- hostile clients (issue 16, item 7) ---------------------------------------------------------------


def vote_all(server: Server, who: str, **kw) -> int:
    """``who`` decides every pair the server hands them; the number decided."""
    n = 0
    while (pair := server.next(who, **kw)["pair"]) is not None:
        body = {"vote_id": vid(), "annotator": who, "left": pair["left"], "right": pair["right"]}
        server.json("POST", "/api/vote", {**body, "choice": "left", "time_ms": 10}, **kw)
        n += 1
    return n


def annotator_rows(dataset: Path) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect(f"file:{dataset / 'annotations.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT name, secret_sha256 FROM annotators ORDER BY name").fetchall()
    finally:
        conn.close()


def test_get_and_cross_origin_requests_change_nothing(dataset):
    """The issue's probe: 61 GETs of /api/next with fresh names (plain and with Origin: evil.com) leased
    every pair. Now a GET is 405 and leases nothing, and a POST from another origin is refused before its
    body is read, even with a valid secret."""
    with Server(dataset) as server:
        evil = {"Origin": "http://evil.com"}
        for i in range(61):
            for headers in ({}, evil):
                status, _, data = server.request("GET", f"/api/next?annotator=b{i}", headers=headers)
                assert status == 405 and json.loads(data)["error"], data
        for i in range(61):
            status, _, data = server.request("POST", "/api/claim", {"annotator": f"c{i}"}, headers=evil)
            assert status == 403 and b"cross-origin" in data, data
        pair = server.next("alice")["pair"]  # alice's own page (no Origin, as curl; secret sent)
        vote = {"vote_id": vid(), "annotator": "alice", "left": pair["left"], "right": pair["right"]}
        vote.update(choice="left", time_ms=5)
        cross = [
            evil,
            {"Origin": "null"},
            {"Origin": f"http://127.0.0.1:{server.port + 1}"},  # another port is another origin
            {"Origin": f"ftp://127.0.0.1:{server.port}"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ]
        for headers in cross:  # alice's valid secret goes with each: the origin alone refuses them
            for path, body in [
                ("/api/next", {"annotator": "alice", "exclude": [pair["pair_id"]]}),
                ("/api/vote", vote),
                ("/api/claim", {"annotator": "c0"}),
            ]:
                status, headers_out, data = server.request("POST", path, body, headers=headers)
                assert status == 403, (path, headers, status, data)
                assert headers_out["content-type"] == "application/json" and json.loads(data)["error"]
        assert db_rows(dataset) == [] and [r[0] for r in annotator_rows(dataset)] == ["alice"]
        # what alice's page sends (its own origin): accepted
        same = {"Origin": f"http://127.0.0.1:{server.port}", "Sec-Fetch-Site": "same-origin"}
        assert server.json("POST", "/api/vote", vote, headers=same)["saved"]
        # the same probe as POSTs from one address with the default cap (9 pairs: the least, 4)
        leased, codes = 0, []
        for i in range(61):
            status, _, data = server.request("POST", "/api/claim", {"annotator": f"d{i}"}, source="127.0.0.2")
            if status != 200:
                codes.append(status)
                continue
            server.secrets[f"d{i}"] = json.loads(data)["secret"]
            status, _, data = server.request(
                "POST", "/api/next", {"annotator": f"d{i}", "exclude": []}, source="127.0.0.2"
            )
            codes.append(status)
            leased += status == 200 and json.loads(data)["pair"] is not None
        assert leased == 4 and codes.count(429) == 61 - 4
        # nothing else leased a pair: alice decides the other 5 at once
        assert 1 + vote_all(server, "alice") == 5


def test_lease_hoarding_is_capped_per_client_and_annotator(dataset):
    """Many fresh names from one address hold at most --client-leases pairs, one name at most 2; a real
    annotator from another address gets the rest at once (not `pair: null` for the lease time)."""
    with Server(dataset, "--client-leases", "4") as server:
        bot = "127.0.0.2"
        names, refused = [], []
        for i in range(61):
            status, _, data = server.request("POST", "/api/claim", {"annotator": f"b{i}"}, source=bot)
            if status == 200:
                names.append(f"b{i}")
                server.secrets[f"b{i}"] = json.loads(data)["secret"]
            else:
                refused.append((status, json.loads(data)["error"]))
        assert names == [f"b{i}" for i in range(30)]  # new names per address per hour
        assert {s for s, _ in refused} == {429} and "the most it may" in refused[0][1]
        statuses = []
        for name in names:
            got: list[str] = []
            for _ in range(3):  # the third needs a new lease: the name lets go of its oldest
                body = {"annotator": name, "exclude": got}
                status, _, data = server.request("POST", "/api/next", body, source=bot)
                statuses.append(status)
                if status == 200:
                    got.append(json.loads(data)["pair"]["pair_id"])
                else:
                    assert status == 429 and b"already holds 4 pairs" in data, data
                    assert b"--client-leases 4" in data
        assert statuses == [200] * 6 + [429] * 84  # b0, b1: 2 held each now (each let one go)
        # one name from a third address asking 61 times holds at most 2 pairs
        solo = "127.0.0.3"
        got = []
        for _ in range(61):
            res = server.next("solo", exclude=got[-16:], source=solo)
            if res["pair"] is not None:
                got.append(res["pair"]["pair_id"])
        assert len(got) == 5  # the 5 pairs the bot does not hold, 2 of them still solo's
        # the real annotator: 9 pairs - 4 (bot) - 2 (solo), at once
        assert vote_all(server, "alice") == 3


def test_a_name_belongs_to_the_browser_that_claimed_it(dataset):
    """Nobody but the holder of bob's secret reads bob's last vote, undoes it, votes or asks for pairs as
    bob; the binding is stored (a restart keeps it) as a SHA-256, never the secret itself."""
    with Server(dataset) as server:
        pair = server.next("bob")["pair"]
        vote_id = vid()
        body = {"vote_id": vote_id, "annotator": "bob", "left": pair["left"], "right": pair["right"]}
        body.update(choice="right", time_ms=50)
        server.json("POST", "/api/vote", body)
        other = server.next("bob")["pair"]
        mallory = server.claim("mallory", source="127.0.0.2")
        as_bob = [
            ("/api/next", {"annotator": "bob", "exclude": []}),
            ("/api/undo", {"annotator": "bob", "vote_id": vote_id}),
            ("/api/vote", {**body, "vote_id": vid(), "left": other["left"], "right": other["right"]}),
        ]
        for secret_header in ({}, {"X-Prefkit-Secret": "x" * 43}, {"X-Prefkit-Secret": mallory}):
            for path, req in as_bob:
                status, _, data = server.request(
                    "POST", path, req, headers=secret_header, secret=False, source="127.0.0.2"
                )
                assert status == 403 and vote_id.encode() not in data, (path, secret_header, data)
                assert b"secret" in data or b"another browser" in data
        status, _, data = server.request("POST", "/api/claim", {"annotator": "bob"}, source="127.0.0.2")
        assert status == 409 and b"already in use" in data
        status, _, data = server.request("GET", "/api/next?annotator=bob")  # the probe
        assert status == 405 and vote_id.encode() not in data
        rows = db_rows(dataset)
        assert len(rows) == 1 and rows[0]["undone_at"] is None and rows[0]["annotator"] == "bob"
        # bob himself: his last vote, his undo
        assert server.next("bob")["last_vote_id"] == vote_id
        server.json("POST", "/api/undo", {"annotator": "bob", "vote_id": vote_id})
        assert db_rows(dataset)[0]["undone_at"] is not None
        secrets = dict(server.secrets)
    stored = dict(annotator_rows(dataset))
    assert set(stored) == {"bob", "mallory"} and secrets["bob"] != secrets["mallory"]
    assert all(len(d) == 64 and d not in secrets.values() for d in stored.values())
    with Server(dataset) as again:
        again.secrets["bob"] = secrets["bob"]
        assert again.next("bob")["pair"] is not None
        status, _, _ = again.request("POST", "/api/claim", {"annotator": "bob"})
        assert status == 409
        status, _, _ = again.request("POST", "/api/next", {"annotator": "bob", "exclude": []}, secret=False)
        assert status == 403


# -- a full or read-only disk (issue 16, item 8) ----------------------------------------------------------


class FailingConnection:
    """An sqlite3 connection whose INSERTs and UPDATEs raise ``error`` (the fault injected at the write call,
    for where no tmpfs can be mounted; the tmpfs tests below fill a real disk)."""

    def __init__(self, conn, error: Exception):
        self.conn, self.error = conn, error

    def execute(self, sql, *args):
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "PRAGMA JOURNAL_MODE")):
            raise self.error
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_store_write_failures_become_storage_errors(tmp_path, monkeypatch):
    import sqlite3

    pairs = [("g0_s0", "g0_s1"), ("g0_s0", "g0_s2")]
    store = VoteStore(tmp_path / "a.sqlite", pairs)
    secret = store.claim("A")
    p = store.next_pair("A")["pair"]
    real = store.conn
    store.conn = FailingConnection(real, sqlite3.OperationalError("database or disk is full"))
    with pytest.raises(StorageError, match="the disk is full") as info:
        store.decide(vid(), "A", p[0], p[1], "left", 10)
    assert info.value.status == 507 and str(tmp_path / "a.sqlite") in str(info.value)
    with pytest.raises(StorageError, match="the disk is full"):
        store.claim("B")
    assert store.votes_on[p] == 0 and not store.decided.get("A") and "B" not in store.secrets
    store.conn = FailingConnection(real, sqlite3.OperationalError("attempt to write a readonly database"))
    with pytest.raises(StorageError, match="read-only") as info:
        store.decide(vid(), "A", p[0], p[1], "left", 10)
    assert info.value.status == 503
    store.conn = real  # space again: the same store works on
    assert store.decide(vid(), "A", p[0], p[1], "left", 10)["saved"] and store.owns("A", secret)
    store.close()
    # at start-up: a full disk is said to be one, not "not a prefkit annotations database"
    connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3,
        "connect",
        lambda *a, **k: FailingConnection(
            connect(*a, **k), sqlite3.OperationalError("database or disk is full")
        ),
    )
    with pytest.raises(PrefkitError, match="the disk is full") as info:
        VoteStore(tmp_path / "b.sqlite", pairs)
    assert "not a prefkit" not in str(info.value) and str(tmp_path / "b.sqlite") in str(info.value)


def mounted_or_skip(disk):
    if disk is None:
        pytest.skip(
            "mounting a tmpfs needs root (CAP_SYS_ADMIN); test_store_write_failures_become_storage_errors "
            "injects the same SQLite errors at the write call instead"
        )


def test_disk_full_during_annotation_answers_json(dataset, tmp_path):
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        mounted_or_skip(disk)
        ds = disk / "ds"
        shutil.copytree(dataset, ds)
        with Server(ds) as server:
            pair = server.next("alice")["pair"]
            body = {"vote_id": vid(), "annotator": "alice", "left": pair["left"], "right": pair["right"]}
            body.update(choice="tie", time_ms=700)
            filler = fill_disk(disk)
            for path, req in [("/api/vote", body), ("/api/claim", {"annotator": "carol"})]:
                status, headers, data = server.request("POST", path, req)
                assert status == 507 and headers["content-type"] == "application/json", (status, data)
                message = json.loads(data)["error"]
                assert "disk is full" in message and "nothing was saved" in message
            assert db_rows(ds) == [] and [r[0] for r in annotator_rows(ds)] == ["alice"]
            assert server.json("GET", "/api/status")["decisions"] == 0  # it still serves
            filler.unlink()
            ack = server.json("POST", "/api/vote", body)  # the same vote, once there is room
            assert ack["saved"] and not ack["duplicate"]
            server.claim("carol")
            # undo on a full disk: refused, and the vote still counts
            filler = fill_disk(disk)
            undo = {"annotator": "alice", "vote_id": body["vote_id"]}
            status, _, data = server.request("POST", "/api/undo", undo)
            assert status == 507 and "disk is full" in json.loads(data)["error"]
            assert db_rows(ds)[0]["undone_at"] is None
            filler.unlink()
            assert server.json("POST", "/api/undo", undo)["undone"] == body["vote_id"]
        log = "".join(server.output)
        assert "the disk is full" in log and str(ds / "annotations.sqlite") in log  # the operator's details
        assert "Traceback" not in log


def test_start_up_tells_full_read_only_and_foreign_apart(dataset, tmp_path):
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        mounted_or_skip(disk)
        ds = disk / "ds"
        shutil.copytree(dataset, ds)
        db = ds / "annotations.sqlite"

        def start_fails(expect: str) -> str:
            res = run_cli("annotate", str(ds), "--port", "0")
            assert res.returncode == 2, (res.stdout, res.stderr)
            err = res.stderr.strip()
            assert expect in err and "not a prefkit" not in err and "Traceback" not in err, err
            return err

        # no database yet, the disk full
        filler = fill_disk(disk)
        assert str(db) in start_fails("the disk is full")
        filler.unlink()
        # a database with votes, then the disk fills
        with Server(ds) as server:
            vote_all(server, "alice")
        filler = fill_disk(disk)
        assert str(db) in start_fails("the disk is full")
        filler.unlink()
        # a read-only mount: the lock file (the first write) says so, and so does the store
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        try:
            assert str(ds) in start_fails("read-only file system")
            with pytest.raises(PrefkitError, match="read-only file system") as info:
                VoteStore(db, [("a", "b")])
            assert str(db) in str(info.value) and "not a prefkit" not in str(info.value)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        assert len(db_rows(ds)) == 9  # nothing was lost on the way
        # and a file that is not a database is still called that
        for extra in (ds / "annotations.sqlite-wal", ds / "annotations.sqlite-shm"):
            extra.unlink(missing_ok=True)
        db.write_bytes(b"not sqlite at all" * 100)
        res = run_cli("annotate", str(ds), "--port", "0")
        assert res.returncode == 2 and "not a prefkit annotations database" in res.stderr


# -- load: 8 annotators at once, then a SIGKILL under load ---------------------------------------------


def annotate_loop(server: Server, annotator: str, quota: int | None, acked: list, errors: list, stop=None):
    """One annotator: next pair, vote, repeat; every 10th vote is re-sent (a retry after a lost answer)."""
    import random

    rng = random.Random(annotator)
    conn = server.connection()
    n = 0
    try:
        conn.request(
            "POST", "/api/claim", json.dumps({"annotator": annotator}), {"Content-Type": "application/json"}
        )
        res = conn.getresponse()
        data = res.read()
        if res.status != 200:
            errors.append(f"{annotator}: claim {res.status} {data[:200]}")
            return
        headers = {"Content-Type": "application/json", "X-Prefkit-Secret": json.loads(data)["secret"]}
        ask = json.dumps({"annotator": annotator, "exclude": []})
        while quota is None or n < quota:
            if stop is not None and stop.is_set():
                return
            conn.request("POST", "/api/next", ask, headers)
            res = conn.getresponse()
            pair = json.loads(res.read())["pair"]
            if res.status != 200 or pair is None:
                errors.append(f"{annotator}: next {res.status} {pair}")
                return
            body = {
                "vote_id": vid(),
                "annotator": annotator,
                "left": pair["left"],
                "right": pair["right"],
                "choice": rng.choice(["left", "right", "tie"]),
                "time_ms": rng.randrange(200, 5000),
            }
            for _ in range(2 if n % 10 == 0 else 1):
                conn.request("POST", "/api/vote", json.dumps(body), headers)
                res = conn.getresponse()
                data = res.read()
                if res.status != 200:
                    errors.append(f"{annotator}: vote {res.status} {data[:200]}")
                    return
            acked.append(body["vote_id"])  # the server said saved
            n += 1
    except (OSError, http.client.HTTPException) as exc:
        if stop is None:
            errors.append(f"{annotator}: {exc!r}")
    finally:
        conn.close()


@pytest.mark.slow
def test_load_and_sigkill(load_dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(load_dataset, ds)
    annotators, total = 8, 2000
    acked: list[str] = []
    errors: list[str] = []
    with Server(ds, "--per-pair", "8") as server:
        assert server.json("GET", "/api/status")["pairs"] == 264
        threads = [
            threading.Thread(target=annotate_loop, args=(server, f"a{i}", total // annotators, acked, errors))
            for i in range(annotators)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        assert errors == []
        status = server.json("GET", "/api/status")
    rows = db_rows(ds)
    ids = [r["vote_id"] for r in rows]
    assert len(acked) == total and len(set(acked)) == total
    lost = set(acked) - set(ids)
    duplicated = len(ids) - len(set(ids))
    assert not lost and duplicated == 0 and len(rows) == total == status["votes"]
    assert len({(r["annotator"], r["key_0"], r["key_1"]) for r in rows}) == total
    per_pair: dict = {}
    for r in rows:
        per_pair[(r["key_0"], r["key_1"])] = per_pair.get((r["key_0"], r["key_1"]), 0) + 1
    assert max(per_pair.values()) <= 8

    # a second burst from 8 new annotators, killed (SIGKILL) in the middle
    burst: list[str] = []
    stop = threading.Event()
    server = Server(ds, "--per-pair", "16")
    threads = [
        threading.Thread(target=annotate_loop, args=(server, f"b{i}", None, burst, errors, stop))
        for i in range(annotators)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(burst) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.proc.kill()  # SIGKILL: no shutdown, no checkpoint
    killed_at = len(burst)
    stop.set()
    for t in threads:
        t.join()
    server.kill()
    acked_before_kill = list(burst)
    assert killed_at >= 300 and errors == []
    # restart: the database opens (WAL replayed) and every acknowledged vote is there
    with Server(ds, "--per-pair", "16") as again:
        after = again.json("GET", "/api/status")
    ids_after = {r["vote_id"] for r in db_rows(ds)}
    missing = set(acked_before_kill) - ids_after
    assert not missing
    in_flight = len(ids_after) - total - len(acked_before_kill)  # committed, answer cut by the kill
    assert 0 <= in_flight <= annotators and after["votes"] == len(ids_after)

    figures = {
        "annotators": annotators,
        "votes": total,
        "seconds": round(elapsed, 3),
        "votes_per_s": round(total / elapsed, 1),
        "requests_per_s": round(total * 2.1 / elapsed, 1),  # next + vote, every 10th vote sent twice
        "lost": len(lost),
        "duplicated": duplicated,
        "acknowledged_before_sigkill": len(acked_before_kill),
        "missing_after_restart": len(missing),
        "committed_but_unacknowledged_at_kill": in_flight,
    }
    (artifacts_dir() / "annotate-load.json").write_text(json.dumps(figures, indent=2))
    print("\nannotate load test:", json.dumps(figures))


# -- the question and the guidelines ----------------------------------------------------------------------

GUIDELINES = (
    "# Rules\n\nPrefer **sharp** images over *blurry* ones. <script>window.__pwned=1</script>\n\n"
    "- count the objects\n- see [the paper](https://arxiv.org/abs/2311.12908), not [this](javascript:alert(1))\n"
)


def test_guidelines_markdown_never_becomes_markup():
    from html.parser import HTMLParser

    from prefkit.annotate.instructions import render_markdown

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.found = []

        def handle_starttag(self, tag, attrs):
            self.found.append((tag, dict(attrs)))

    hostile = [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        '<a href="javascript:alert(1)">x</a>',
        "[x](javascript:alert(1)) [y](data:text/html,<b>) [z](vbscript:x)",
        '[x](https://a.b/"onmouseover="alert(1))',
        "[x](https://a.b/'onload='alert(1))",
        "**<b onclick=x>bold</b>** *<i>*",
        "`<code>` and ``</p><script>``",
        "- <li>item</li>\n1. <ol>\n# <h1>title</h1>",
        "a\x00b\x001\x00 <\x00script>",
        "<!-- comment --> <![CDATA[x]]> &lt;already&gt; &#60;script&#62;",
    ]
    allowed = {"p", "ul", "ol", "li", "strong", "em", "code", "a", "h3", "h4", "h5", "h6"}
    for text in hostile:
        out = render_markdown(text)
        parser = Tags()
        parser.feed(out)
        for tag, attrs in parser.found:
            assert tag in allowed, (text, out)
            if tag == "a":
                assert set(attrs) == {"href", "rel", "target"} and attrs["href"].startswith("https://"), out
            else:
                assert attrs == {}, (text, out)
        assert "<script" not in out and "<img" not in out, out
    out = render_markdown(GUIDELINES)
    assert "<h3>Rules</h3>" in out and "<strong>sharp</strong>" in out and "<em>blurry</em>" in out
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in out
    assert '<a href="https://arxiv.org/abs/2311.12908" rel="noopener noreferrer" target="_blank">' in out
    assert "[this](javascript:alert(1))" in out  # not a link: shown as written
    # underscores inside words are no emphasis
    assert render_markdown("a window.__x=1 and window.__y snake_case_name") == (
        "<p>a window.__x=1 and window.__y snake_case_name</p>"
    )
    assert render_markdown("__strong__ _em_") == "<p><strong>strong</strong> <em>em</em></p>"
    assert out.count("<li>") == 2
    # an address keeps its underscores and ampersands (as the entity a href needs)
    out = render_markdown("[x](https://a.b/x_y_z?a=1&b=2)")
    assert 'href="https://a.b/x_y_z?a=1&amp;b=2"' in out


def test_store_records_the_question_and_refuses_another(tmp_path):
    import hashlib
    import sqlite3

    from prefkit.annotate.store import read_instructions
    from prefkit.config import DEFAULT_QUESTION

    path = tmp_path / "q.sqlite"
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    sha = hashlib.sha256(GUIDELINES.encode()).hexdigest()
    store = VoteStore(path, pairs, question="Which is sharper?", guidelines=GUIDELINES)
    assert store.status()["question"] == "Which is sharper?" and store.status()["guidelines_sha256"] == sha
    store.decide(vid(), "A", "a", "b", "left", 10)
    store.decide(vid(), "A", "c", "a", "skip", 10)
    store.close()
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT question, guidelines_sha256 FROM votes").fetchall()
    assert rows == [("Which is sharper?", sha)] * 2
    assert conn.execute("SELECT sha256, text FROM guidelines").fetchall() == [(sha, GUIDELINES)]
    conn.close()
    # the same question with other guidelines is fine (each vote keeps its hash); another question is not
    VoteStore(path, pairs, question="Which is sharper?").close()
    before = path.read_bytes()
    with pytest.raises(
        PrefkitError, match=r"2 decision\(s\) under another question \('Which is sharper\?'\)"
    ):
        VoteStore(path, pairs)  # the default question
    assert path.read_bytes() == before
    with pytest.raises(PrefkitError, match="--force-question"):
        VoteStore(path, pairs, question="Which has more cats?")
    store = VoteStore(path, pairs, question="Which has more cats?", force_question=True)
    store.decide(vid(), "B", "b", "c", "right", 10)
    store.close()
    assert read_instructions(path) == [
        {"question": "Which is sharper?", "guidelines_sha256": sha, "votes": 1},  # the skip is no vote
        {"question": "Which has more cats?", "guidelines_sha256": None, "votes": 1},
    ]
    # undone decisions do not hold the question
    other = tmp_path / "u.sqlite"
    store = VoteStore(other, pairs)
    store.decide("v" * 10, "A", "a", "b", "left", 10)
    store.undo("A", "v" * 10)
    store.close()
    VoteStore(other, pairs, question="Which has more cats?").close()
    assert read_instructions(other) == []
    assert DEFAULT_QUESTION  # the default exists, and is what an old store's votes were asked


def test_a_version_1_store_is_read_as_it_is_and_upgraded_by_a_server(tmp_path):
    import sqlite3

    from prefkit.annotate.store import read_decisions, read_instructions
    from prefkit.config import DEFAULT_QUESTION

    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO info VALUES ('format', 'prefkit-annotations'), ('version', '1');
        CREATE TABLE votes (id INTEGER PRIMARY KEY AUTOINCREMENT, vote_id TEXT NOT NULL UNIQUE,
            annotator TEXT NOT NULL, key_0 TEXT NOT NULL, key_1 TEXT NOT NULL, choice TEXT NOT NULL,
            left_key TEXT NOT NULL, time_ms INTEGER, created_at TEXT NOT NULL, undone_at TEXT);
        INSERT INTO votes (vote_id, annotator, key_0, key_1, choice, left_key, time_ms, created_at)
            VALUES ('old-vote-1', 'A', 'a', 'b', '0', 'a', 5, '2025-01-01T00:00:00.000Z');
        """
    )
    conn.commit()
    conn.close()
    # read-only (an export): nothing changes in the file
    before = path.read_bytes()
    assert [d.vote_id for d in read_decisions(path)] == ["old-vote-1"]
    assert read_instructions(path) == [{"question": DEFAULT_QUESTION, "guidelines_sha256": None, "votes": 1}]
    assert path.read_bytes() == before
    # a server upgrades it: the old vote has the default question, what the page asked then
    with pytest.raises(PrefkitError, match="another question"):
        VoteStore(path, [("a", "b"), ("a", "c")], question="Which has more cats?")
    store = VoteStore(path, [("a", "b"), ("a", "c")])
    store.decide(vid(), "A", "a", "c", "tie", 5)
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM info WHERE key = 'version'").fetchone() == ("2",)
    assert conn.execute("SELECT question FROM votes").fetchall() == [(DEFAULT_QUESTION,)] * 2
    conn.close()
    # a newer store than this prefkit knows is refused, not misread
    conn = sqlite3.connect(path)
    conn.execute("UPDATE info SET value = '3' WHERE key = 'version'")
    conn.commit()
    conn.close()
    with pytest.raises(PrefkitError, match="version '3'"):
        read_decisions(path)


def page_instructions(server: Server) -> tuple[str, str]:
    """(the page's HTML, the instructions id in its meta tag)."""
    import re

    status, _, body = server.request("GET", "/")
    assert status == 200
    page = body.decode()
    found = re.search(r'<meta name="prefkit-instructions" content="([0-9a-f]{16})">', page)
    assert found, page[:400]
    return page, found.group(1)


def test_the_question_and_guidelines_are_shown_stored_and_exported(dataset, cli, tmp_path):
    import hashlib
    import html

    guide = tmp_path / "guidelines.md"
    guide.write_text(GUIDELINES)
    sha = hashlib.sha256(guide.read_bytes()).hexdigest()
    question = 'Which image shows more <b>cats</b> & "dogs"?'
    with Server(dataset, "--question", question, "--guidelines", str(guide)) as server:
        assert f"question: {question}" in "".join(server.output)
        page, shown = page_instructions(server)
        assert f'<h1 id="question">{html.escape(question)}</h1>' in page
        assert "<strong>sharp</strong>" in page and "&lt;script&gt;window.__pwned=1" in page
        assert "<script>window" not in page and "{{" not in page
        status = server.json("GET", "/api/status")
        assert (status["question"], status["guidelines_sha256"]) == (question, sha)
        pair = first_pair(server)
        body = {"vote_id": vid(), "annotator": "ann", "left": pair["left"], "right": pair["right"]}
        body.update(choice="left", time_ms=900)
        # a page loaded under other instructions: refused, nothing stored
        stale = {**body, "instructions": "0" * 16}
        status_code, _, data = server.request("POST", "/api/vote", stale)
        assert status_code == 412 and "reload the page" in json.loads(data)["error"]
        assert db_rows(dataset) == []
        server.json("POST", "/api/vote", {**body, "instructions": shown})
        pair = first_pair(server)  # an API client that names no instructions votes under the server's
        body = {"vote_id": vid(), "annotator": "ann", "left": pair["left"], "right": pair["right"]}
        server.json("POST", "/api/vote", {**body, "choice": "right", "time_ms": 800})
    rows = db_rows(dataset)
    assert [(r["question"], r["guidelines_sha256"]) for r in rows] == [(question, sha)] * 2
    res = cli(["annotate", str(dataset), "--export", "web"])
    assert res.exit_code == 0, res.output
    assert read_meta(dataset, "web")["instructions"] == [
        {"question": question, "guidelines_sha256": sha, "votes": 2}
    ]
    # another question on this store: refused before anything is written, unless --force-question
    before = db_rows(dataset)
    res = cli(["annotate", str(dataset), "--port", "0", "--question", "Which one is sharper?"])
    assert res.exit_code == 2 and "2 decision(s) under another question" in res.stderr, res.output
    assert "--force-question" in res.stderr and db_rows(dataset) == before
    with Server(dataset, "--question", "Which one is sharper?", "--force-question") as server:
        assert "note: 2 decision(s) so far were made under another question" in "".join(server.output)
        _, shown_now = page_instructions(server)
        assert shown_now != shown
        pair = first_pair(server, "bob")
        body = {"vote_id": vid(), "annotator": "bob", "left": pair["left"], "right": pair["right"]}
        server.json("POST", "/api/vote", {**body, "choice": "tie", "time_ms": 700, "instructions": shown_now})
    assert db_rows(dataset)[-1]["question"] == "Which one is sharper?"
    assert db_rows(dataset)[-1]["guidelines_sha256"] is None
    assert cli(["annotate", str(dataset), "--export", "web2"]).exit_code == 0
    assert read_meta(dataset, "web2")["instructions"] == [
        {"question": question, "guidelines_sha256": sha, "votes": 2},
        {"question": "Which one is sharper?", "guidelines_sha256": None, "votes": 1},
    ]


def test_question_and_guidelines_errors(dataset, tmp_path, cli):
    not_utf8 = tmp_path / "latin1.md"
    not_utf8.write_bytes("caf\xe9".encode("latin-1"))
    big = tmp_path / "big.md"
    big.write_text("x" * (64 * 1024 + 1))
    cases = [
        (["--question", "  "], "give the question"),
        (["--question", "one\ntwo"], "one line"),
        (["--question", "x" * 301], "at most 300"),
        (["--guidelines", str(tmp_path / "missing.md")], "no such file"),
        (["--guidelines", str(tmp_path)], "a folder"),
        (["--guidelines", str(not_utf8)], "not UTF-8"),
        (["--guidelines", str(big)], "at most 65,536"),
        (["--export", "x", "--question", "Which?"], "serves nothing"),
        (["--export", "x", "--force-question"], "serves nothing"),
    ]
    for args, message in cases:
        res = cli(["annotate", str(dataset), "--port", "0", *args])
        assert res.exit_code == 2 and message in res.stderr, (args, res.output)
    assert not (dataset / "annotations.sqlite").exists()  # nothing written by a failed start
