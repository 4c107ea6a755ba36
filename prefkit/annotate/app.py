"""The annotation page's ASGI app (Starlette): the page, three JSON calls, the images, the access gate.

Routes (every one behind :class:`AccessGate`)::

    GET  /                      the page (static/index.html, with the question and the rendered guidelines)
    GET  /static/NAME           the page's script and style sheet: a fixed list of names, nothing else
    GET  /image/KEY             a sample's PNG from its shard; KEY must be a key of the dataset, else 404
    POST /api/claim  {annotator}                 a new name -> {annotator, secret}; the only time it is shown
    POST /api/next   {annotator, exclude: [PAIR_ID, ...]}    the pair to show next (null when none is left)
    POST /api/vote   {vote_id, annotator, left, right, choice: left|right|tie|skip, time_ms, instructions?}
    POST /api/undo   {annotator, vote_id}
    GET  /api/status            counts

Every request that changes something is a POST (a GET changes nothing, not even a lease):

* its ``Origin`` (and ``Sec-Fetch-Site``), when the browser sends them, must be this server's own: a page
  of another site gets 403 before its body is read;
* its body is JSON (``Content-Type: application/json``): another site's page cannot send that without a
  CORS preflight, which this app never grants;
* next, vote and undo carry the annotator's secret in the header ``X-Prefkit-Secret`` (what ``/api/claim``
  returned for that name; the page keeps it in localStorage). Missing or not that name's: 403. It is the
  request's CSRF token too, since no other site can read it or set the header.

The page names the question and guidelines it showed (``instructions``: the id in its
``<meta name="prefkit-instructions">``) with each vote: a vote from a page loaded before the server was
restarted with another question or other guidelines is refused (412, "reload the page"), never stored
under instructions its annotator did not see. A client that leaves the field out votes under the server's.

Errors are JSON ``{"error": message}`` and change nothing: 4xx for the request (429: the client's lease or
name limit, see :class:`~prefkit.annotate.store.VoteStore`), 507 when the server's disk is full, 503 when
its database cannot be written, 500 for anything else (the trace goes to the server's terminal).
"""

from __future__ import annotations

import hmac
import html
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prefkit.annotate.images import ImageIndex
from prefkit.annotate.instructions import Instructions
from prefkit.annotate.store import VOTE_ID, Busy, Conflict, NotFound, StorageError, VoteStore
from prefkit.label_sets import SampleInfo

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}
MAX_BODY = 16 * 1024  # bytes of a POST body
MAX_NAME = 64
MAX_TIME_MS = 24 * 3600 * 1000
KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
SIDES = ("left", "right", "tie", "skip")
MAX_EXCLUDE = 16
SECRET_HEADER = "x-prefkit-secret"
# what the page says when the database cannot be written; the server's terminal gets the details
STORAGE_MESSAGES = {
    507: "the server's disk is full: nothing was saved. Tell the person running prefkit annotate to free "
    "disk space, then try again.",
    503: "the server cannot write its database (read-only or an I/O error): nothing was saved. Tell the "
    "person running prefkit annotate.",
}

# the page loads its own script and style only; a prompt can never become markup, and if it somehow did,
# inline script and foreign images would still be refused
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


def load_static() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of the page's files, read once at start-up."""
    return {p.name: (p.read_bytes(), STATIC_TYPES[p.suffix]) for p in sorted(STATIC_DIR.iterdir())}


def fill_page(page: bytes, instructions: Instructions) -> bytes:
    """index.html with its slots filled: the question (escaped text), the guidelines (safe HTML from
    :func:`~prefkit.annotate.instructions.render_markdown`; the section is left out without guidelines) and
    the instructions' id. One pass, so nothing filled in is read as a slot."""
    guidelines = instructions.guidelines_html
    if guidelines:
        guidelines = (
            '<details id="guidelines" open><summary>Guidelines</summary>'
            f'<div class="md">{guidelines}</div></details>'
        )
    slots = {
        "question": html.escape(instructions.question),
        "guidelines": guidelines,
        "instructions_id": instructions.id,
    }
    return re.sub(
        r"\{\{(question|guidelines|instructions_id)\}\}", lambda m: slots[m.group(1)], page.decode()
    ).encode()


def create_app(
    store: VoteStore,
    images: ImageIndex,
    samples: dict[str, SampleInfo],
    instructions: Instructions | None = None,
) -> Starlette:
    instructions = instructions or Instructions()
    static = load_static()
    index = fill_page(static["index.html"][0], instructions)

    def pair_payload(pair, left: str | None) -> dict[str, Any] | None:
        if pair is None:
            return None
        right = pair[1] if left == pair[0] else pair[0]
        info = samples[pair[0]]
        return {
            "pair_id": f"{pair[0]}__{pair[1]}",
            "group_id": info.group_id,
            "prompt": info.prompt,
            "left": left,
            "right": right,
            "left_url": f"/image/{left}",
            "right_url": f"/image/{right}",
        }

    async def page(request: Request) -> Response:
        return Response(index, media_type=static["index.html"][1], headers=PAGE_HEADERS)

    async def static_file(request: Request) -> Response:
        found = static.get(request.path_params["name"])
        if found is None or request.path_params["name"] == "index.html":
            return error("not found", 404)
        return Response(found[0], media_type=found[1], headers={**PAGE_HEADERS, "Cache-Control": "no-cache"})

    async def image(request: Request) -> Response:
        key = request.path_params["key"]
        data = await run_in_threadpool(images.read, key) if KEY.fullmatch(key) else None
        if data is None:
            return error(f"no image {key!r} in this dataset", 404)
        # shards are never rewritten: a key's image never changes
        headers = {
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
        }
        return Response(data, media_type="image/png", headers=headers)

    def refused(exc: Exception) -> Response:
        """The JSON answer to an exception of the request checks or the store."""
        if isinstance(exc, BadRequest):
            return error(str(exc), exc.status)
        if isinstance(exc, Conflict):
            return error(str(exc), 409)
        if isinstance(exc, Busy):
            return error(str(exc), 429)
        if isinstance(exc, StorageError):
            print(f"prefkit annotate: {exc}", file=sys.stderr, flush=True)
            return error(STORAGE_MESSAGES[exc.status], exc.status)
        raise exc

    async def post(request: Request, names: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:
        """A state-changing request's checks in order: same origin, JSON body, the fields ``names`` (and
        perhaps ``optional``), and (when ``annotator`` is one of them and the call is not a claim) the
        annotator's secret."""
        check_origin(request)
        fields = expect_fields(await read_json(request), names, optional)
        if "annotator" in names:
            fields["annotator"] = check_name(fields["annotator"])
            if request.url.path != "/api/claim":
                check_secret(request, fields["annotator"])
        return fields

    def check_secret(request: Request, annotator: str) -> None:
        secret = request.headers.get(SECRET_HEADER)
        if not secret:
            raise BadRequest(
                "no annotator secret (header X-Prefkit-Secret): reload the page; it gets one when your name "
                "is first used",
                403,
            )
        if not store.owns(annotator, secret):
            raise BadRequest(
                f"the name {annotator!r} belongs to another browser (or was never claimed here): "
                "choose another name",
                403,
            )

    def client_of(request: Request) -> str:
        return request.client.host if request.client else ""

    async def claim(request: Request) -> Response:
        try:
            fields = await post(request, {"annotator"})
            secret = await run_in_threadpool(store.claim, fields["annotator"], client_of(request))
        except (BadRequest, Conflict, Busy, StorageError) as exc:
            return refused(exc)
        return api_json({"annotator": fields["annotator"], "secret": secret})

    async def next_pair(request: Request) -> Response:
        try:
            fields = await post(request, {"annotator", "exclude"})
            ids = fields["exclude"]
            if not isinstance(ids, list) or len(ids) > MAX_EXCLUDE:
                raise BadRequest(f"exclude: a list of at most {MAX_EXCLUDE} pair ids")
            exclude = set()
            for pid in ids:
                k0, sep, k1 = pid.partition("__") if isinstance(pid, str) else ("", "", "")
                if not sep or not KEY.fullmatch(k0) or not KEY.fullmatch(k1):
                    raise BadRequest(f"exclude {pid!r} is not a pair id (KEY0__KEY1)")
                exclude.add((k0, k1))
            res = await run_in_threadpool(store.next_pair, fields["annotator"], exclude, client_of(request))
        except (BadRequest, Busy) as exc:
            return refused(exc)
        left = res.pop("left")
        return api_json({**res, "pair": pair_payload(res["pair"], left)})

    async def vote(request: Request) -> Response:
        try:
            fields = await post(
                request, {"vote_id", "annotator", "left", "right", "choice", "time_ms"}, {"instructions"}
            )
            shown = fields.get("instructions", instructions.id)
            if shown != instructions.id:
                raise BadRequest(
                    "the question or the guidelines have changed since this page was loaded: nothing was "
                    "saved; reload the page and read them again",
                    412,
                )
            vote_id = check_vote_id(fields["vote_id"])
            annotator = fields["annotator"]
            left, right = (check_key(fields[n], n, samples) for n in ("left", "right"))
            if left == right:
                raise BadRequest(f"left and right are the same sample {left!r}", 422)
            if samples[left].group_id != samples[right].group_id:
                raise BadRequest(f"{left!r} and {right!r} come from different prompts: not a pair", 422)
            side = fields["choice"]
            if side not in SIDES:
                raise BadRequest(f"choice {side!r} is not one of {', '.join(SIDES)}", 422)
            time_ms = fields["time_ms"]
            if time_ms is not None and (
                isinstance(time_ms, bool) or not isinstance(time_ms, int) or not 0 <= time_ms <= MAX_TIME_MS
            ):
                raise BadRequest(f"time_ms {time_ms!r} is not a whole number of ms in 0..{MAX_TIME_MS}", 422)
            ack = await run_in_threadpool(store.decide, vote_id, annotator, left, right, side, time_ms)
        except NotFound as exc:
            return error(str(exc), 422)
        except (BadRequest, Conflict, StorageError) as exc:
            return refused(exc)
        return api_json(ack)

    async def undo(request: Request) -> Response:
        try:
            fields = await post(request, {"annotator", "vote_id"})
            vote_id = check_vote_id(fields["vote_id"])
            res = await run_in_threadpool(store.undo, fields["annotator"], vote_id, client_of(request))
        except NotFound as exc:
            return error(str(exc), 404)
        except (BadRequest, StorageError) as exc:
            return refused(exc)
        left = res.pop("left")
        return api_json({**res, "pair": pair_payload(res["pair"], left)})

    async def status(request: Request) -> Response:
        return api_json(await run_in_threadpool(store.status))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error("not found", 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error(f"{request.method} is not allowed here", 405)

    async def internal(request: Request, exc: Exception) -> Response:
        # Starlette logs the trace to the server's terminal after this answer
        return error("internal error in the server (its terminal has the details); try again", 500)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static_file, methods=["GET"]),
        Route("/image/{key}", image, methods=["GET"]),
        Route("/api/claim", claim, methods=["POST"]),
        Route("/api/next", next_pair, methods=["POST"]),
        Route("/api/vote", vote, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/api/status", status, methods=["GET"]),
    ]
    return Starlette(
        routes=routes, exception_handlers={404: not_found, 405: not_allowed, Exception: internal}
    )


def api_json(data: dict[str, Any]) -> JSONResponse:
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


# -- request checks ---------------------------------------------------------------------------------------


async def read_json(request: Request) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise BadRequest(f"send JSON (Content-Type: application/json), not {ctype or 'nothing'!r}", 415)
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest(f"request body over {MAX_BODY} bytes", 413)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON ({exc})") from None


def check_origin(request: Request) -> None:
    """403 unless the request comes from this server's own page (or from no browser page at all: a client
    that sends no Origin, like curl, is not a cross-site request; it still needs the annotator's secret)."""
    origin = request.headers.get("origin")
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise BadRequest(
            f"cross-site request refused (Sec-Fetch-Site: {request.headers['sec-fetch-site']})", 403
        )
    if origin is None:
        return
    parts = urlsplit(origin)
    host = request.headers.get("host", "").lower()
    if parts.scheme not in ("http", "https") or not host or parts.netloc.lower() != host:
        raise BadRequest(
            f"cross-origin request from {origin!r} refused: use the page this server serves", 403
        )


def expect_fields(body: Any, names: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object with {', '.join(sorted(names))}")
    missing = sorted(names - body.keys())
    extra = sorted(body.keys() - names - optional)
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else []
        )
        raise BadRequest(f"fields: {'; '.join(parts)}")
    return body


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("annotator: give your name (1 to 64 characters)")
    name = value.strip()
    if len(name) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadRequest(f"annotator: at most {MAX_NAME} printable characters")
    return name


def check_vote_id(value: Any) -> str:
    if not isinstance(value, str) or not VOTE_ID.fullmatch(value):
        raise BadRequest("vote_id: 8 to 64 characters of A-Z a-z 0-9 _ -", 422)
    return value


def check_key(value: Any, name: str, samples: dict[str, SampleInfo]) -> str:
    if not isinstance(value, str) or value not in samples:
        raise BadRequest(f"{name}: {value!r} is not a sample key of this dataset", 422)
    return value


# -- access ------------------------------------------------------------------------------------------------


class AccessGate:
    """ASGI middleware in front of every request.

    ``token``: when set, each request must carry it: ``Authorization: Bearer TOKEN``, the cookie the page
    gets, or ``?token=TOKEN`` (answered by a redirect that sets the cookie and drops the token from the
    address). Missing: 401; wrong: 403. Compared in constant time.
    ``hosts``: when set (a loopback bind without a token), the Host header must name one of them: a site
    that points its own name at 127.0.0.1 (DNS rebinding) is refused.
    """

    def __init__(self, app, token: str | None, hosts: set[str] | None, cookie: str):
        self.app = app
        self.token = token.encode() if token else None
        self.hosts = hosts
        self.cookie = cookie

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.hosts is not None:
            host = headers.get("host", "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in self.hosts:
                return await error(
                    f"Host {headers.get('host', '')!r} is not allowed: open the address prefkit printed", 403
                )(scope, receive, send)
        if self.token is not None:
            from starlette.requests import HTTPConnection

            conn = HTTPConnection(scope)
            auth = headers.get("authorization", "")
            query = conn.query_params.get("token")
            given = (
                auth[7:].strip()
                if auth.lower().startswith("bearer ")
                else conn.cookies.get(self.cookie) or query
            )
            if not given:
                return await error(
                    "an access token is required: open the address with ?token=... that prefkit printed", 401
                )(scope, receive, send)
            if not hmac.compare_digest(given.encode(), self.token):
                return await error("wrong access token", 403)(scope, receive, send)
            if query is not None and scope["method"] == "GET" and scope["path"] == "/":
                response = Response(status_code=303, headers={"Location": "/", "Cache-Control": "no-store"})
                response.set_cookie(self.cookie, given, httponly=True, samesite="strict", path="/")
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
