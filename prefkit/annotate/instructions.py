"""What the annotators are asked: the question (``--question``) and the guidelines (``--guidelines FILE``).

Both are the project owner's text, shown on the page and recorded with every vote (the question as text,
the guidelines as the SHA-256 of the file's bytes; the store also keeps each guidelines text once).

The guidelines are Markdown, rendered by :func:`render_markdown` safely: the text is HTML-escaped first,
so nothing in it can become markup; then a small subset is recognised on the escaped text: paragraphs,
headings (``#``), ``**bold**``, ``*italic*``, ```code```, lists (``-``, ``*``, ``+``, ``1.``) and links
``[text](http://...)`` or ``https://``. Anything else (raw HTML, images, ``javascript:`` links, tables)
is shown as the text it is.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from pathlib import Path

from prefkit.config import DEFAULT_QUESTION
from prefkit.errors import PrefkitError

MAX_QUESTION = 300  # characters
MAX_GUIDELINES = 64 * 1024  # bytes of the Markdown file


@dataclass(frozen=True)
class Instructions:
    """The question and guidelines a server shows; ``id`` names the pair of them (the page sends it with
    each vote, so a vote made on a page loaded under other instructions is refused, not misrecorded)."""

    question: str = DEFAULT_QUESTION
    guidelines: str | None = None  # the Markdown text
    guidelines_sha256: str | None = None  # of the file's bytes

    @property
    def id(self) -> str:
        both = f"{self.question}\0{self.guidelines_sha256 or ''}"
        return hashlib.sha256(both.encode()).hexdigest()[:16]

    @property
    def guidelines_html(self) -> str:
        return "" if self.guidelines is None else render_markdown(self.guidelines)


def check_question(question: str | None) -> str:
    """The question, stripped; one line of 1 to MAX_QUESTION printable characters."""
    if question is None:
        return DEFAULT_QUESTION
    text = question.strip()
    if not text:
        raise PrefkitError("--question: give the question the annotators answer (one line)")
    if len(text) > MAX_QUESTION:
        raise PrefkitError(
            f"--question: {len(text)} characters; at most {MAX_QUESTION} (put the details in --guidelines)"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise PrefkitError("--question: one line of printable text (no newlines or control characters)")
    return text


def read_guidelines(path: str | Path | None) -> tuple[str | None, str | None]:
    """(Markdown text, SHA-256 of the file's bytes) of ``--guidelines FILE``; (None, None) without one."""
    if path is None:
        return None, None
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PrefkitError(f"--guidelines {path}: no such file") from None
    except IsADirectoryError:
        raise PrefkitError(f"--guidelines {path}: a folder; give a Markdown file") from None
    except OSError as exc:
        raise PrefkitError(f"--guidelines {path}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_GUIDELINES:
        raise PrefkitError(
            f"--guidelines {path}: {len(data):,} bytes; at most {MAX_GUIDELINES:,} (the page shows all of it)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrefkitError(f"--guidelines {path}: not UTF-8 text ({exc})") from None
    if not text.strip():
        raise PrefkitError(f"--guidelines {path}: the file is empty")
    return text, hashlib.sha256(data).hexdigest()


# -- Markdown, a safe subset ------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_BULLET = re.compile(r" {0,3}[-*+][ \t]+(.*)$")
_NUMBERED = re.compile(r" {0,3}\d{1,9}[.)][ \t]+(.*)$")
# on escaped text: the link text has no ']' and the address no space, parenthesis, '<', '>' or '"' (those
# are entities by now, and an entity's '&' and ';' are allowed: '&amp;' is the right way to write '&')
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s()<>\"']+)\)")
_CODE = re.compile(r"`([^`\n]+)`")
_STRONG_STAR = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
# underscores emphasise whole words only: snake_case and window.__name stay as written
_STRONG_UNDER = re.compile(r"(?<![_\w])__(?=[^\s_])(.+?)(?<=[^\s_])__(?![_\w])")
_EM_STAR = re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])")
_EM_UNDER = re.compile(r"(?<![_\w])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![_\w])")
_TOKEN = re.compile(r"\x00(\d+)\x00")


def _inline(text: str) -> str:
    """One line of raw text -> safe HTML: escaped, then code spans, links, bold and italic."""
    kept: list[str] = []  # finished HTML, put back at the end (no emphasis inside code or addresses)

    def keep(fragment: str) -> str:
        kept.append(fragment)
        return f"\x00{len(kept) - 1}\x00"

    out = html.escape(_CONTROL.sub("", text), quote=True)
    out = _CODE.sub(lambda m: keep(f"<code>{m.group(1)}</code>"), out)
    out = _LINK.sub(
        lambda m: keep(
            f'<a href="{m.group(2)}" rel="noopener noreferrer" target="_blank">{_emphasis(m.group(1))}</a>'
        ),
        out,
    )
    out = _emphasis(out)
    while _TOKEN.search(out):  # a link's text may hold a kept code span
        out = _TOKEN.sub(lambda m: kept[int(m.group(1))], out)
    return out


def _emphasis(text: str) -> str:
    text = _STRONG_STAR.sub(r"<strong>\1</strong>", text)
    text = _STRONG_UNDER.sub(r"<strong>\1</strong>", text)
    text = _EM_STAR.sub(r"<em>\1</em>", text)
    return _EM_UNDER.sub(r"<em>\1</em>", text)


def render_markdown(text: str) -> str:
    """Markdown -> HTML that holds no markup of the input's own (see the module docstring)."""
    out: list[str] = []
    para: list[str] = []
    items: list[list[str]] = []
    kind = None  # "ul" / "ol" while a list is open

    def flush_para() -> None:
        if para:
            out.append("<p>" + "\n".join(_inline(line) for line in para) + "</p>")
            para.clear()

    def flush_list() -> None:
        nonlocal kind
        if items:
            lis = "".join("<li>" + "\n".join(_inline(line) for line in item) + "</li>" for item in items)
            out.append(f"<{kind}>{lis}</{kind}>")
            items.clear()
        kind = None

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            flush_para()
            flush_list()
            continue
        heading = _HEADING.match(line)
        bullet = _BULLET.match(line)
        numbered = None if bullet else _NUMBERED.match(line)
        if heading:
            flush_para()
            flush_list()
            level = min(len(heading.group(1)) + 2, 6)  # the page's h1 is the question, h2 "Guidelines"
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif bullet or numbered:
            flush_para()
            new = "ul" if bullet else "ol"
            if kind != new:
                flush_list()
                kind = new
            items.append([(bullet or numbered).group(1)])
        elif items and line[:1] in (" ", "\t"):  # an indented line goes on with the item
            items[-1].append(line.strip())
        else:
            flush_list()
            para.append(line.strip())
    flush_para()
    flush_list()
    return "\n".join(out)
