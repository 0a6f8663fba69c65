"""Document readers: every format becomes a list of text lines, each with where it came from.

A `Line` keeps its source location (the line number in a text file, the page number in a PDF) and
whether it is a heading, so chunks can cite exactly the lines they hold and split at headings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal

from tunekit.errors import UserError

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
Unit = Literal["line", "page"]

_MARKDOWN_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+\S")
_MARKDOWN_FENCE = re.compile(r"^ {0,3}(```|~~~)")


@dataclass(frozen=True)
class Line:
    text: str
    loc: int  # 1-based line number, or page number for PDFs
    heading: int = 0  # 1-6 for a heading of that level, 0 for body text


@dataclass(frozen=True)
class Document:
    path: Path
    unit: Unit
    lines: list[Line]


def read_document(path: Path) -> Document:
    """Read one supported file; an unreadable or undecodable file is a UserError naming it."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UserError(
            f"unsupported document type '{suffix or path.name}'",
            where=str(path),
            fix=f"index {', '.join(SUPPORTED_SUFFIXES)} files",
        )
    if suffix == ".pdf":
        return Document(path, "page", _pdf_lines(path))
    text = _read_text(path)
    if suffix in (".html", ".htm"):
        return Document(path, "line", html_lines(text))
    if suffix == ".txt":
        return Document(path, "line", [Line(t, i) for i, t in enumerate(text.splitlines(), start=1)])
    return Document(path, "line", markdown_lines(text))


def markdown_lines(text: str) -> list[Line]:
    """Lines of a markdown file; `#` lines are headings unless they sit inside a fenced code block."""
    lines, in_fence = [], False
    for number, raw in enumerate(text.splitlines(), start=1):
        if _MARKDOWN_FENCE.match(raw):
            in_fence = not in_fence
        match = None if in_fence else _MARKDOWN_HEADING.match(raw)
        lines.append(Line(raw, number, len(match.group(1)) if match else 0))
    return lines


def html_lines(text: str) -> list[Line]:
    """Visible text of an HTML page, one `Line` per text line, numbered by its line in the source."""
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return parser.finish()


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: a BOM would otherwise glue itself to the first heading and hide it.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"not UTF-8 text (byte {exc.start} cannot be decoded)", where=str(path), fix="convert it to UTF-8"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read file: {exc.strerror}", where=str(path)) from None


def _pdf_lines(path: Path) -> list[Line]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError as exc:
        raise UserError("reading PDFs needs pypdf", where=str(path), fix="pip install 'tunekit[rag]'") from exc
    try:
        reader = PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, OSError, ValueError, KeyError) as exc:
        # pypdf raises several types for damaged files; all of them mean "this PDF cannot be read".
        raise UserError(f"cannot read PDF: {exc}", where=str(path), fix="check that it opens in a PDF viewer") from None
    # PDFs carry no reliable heading markup, so pages are located by number and chunked by size only.
    return [Line(text, number) for number, page in enumerate(pages, start=1) for text in page.splitlines()]


class _TextExtractor(HTMLParser):
    """Collects visible text per source line; h1-h6 become headings, block tags end a line.

    Hand-written on the stdlib parser because the line numbers of the source are what citations need,
    and HTML-to-text libraries drop them.
    """

    _SKIP = frozenset({"script", "style", "head", "template", "noscript", "svg"})
    _BLOCKS = frozenset(
        {"p", "div", "br", "hr", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "td", "th", "pre", "blockquote"}
        | {"section", "article", "header", "footer", "nav", "aside", "main", "figcaption", "title"}
        | {"h1", "h2", "h3", "h4", "h5", "h6"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._skip_depth = 0
        self._heading = 0
        self._parts: list[tuple[int, int, str]] = []  # (source line, heading level, text)
        self._lines: list[Line] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip_depth += 1
        elif tag in self._BLOCKS:
            self._flush()
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._heading = int(tag[1])

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in self._BLOCKS:
            self._flush()
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._heading = 0

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        first_line = self.getpos()[0]
        for offset, piece in enumerate(data.split("\n")):
            if offset:
                self._flush()  # a newline in the source ends a line of text too
            if piece.strip():
                self._parts.append((first_line + offset, self._heading, piece))

    def _flush(self) -> None:
        if not self._parts:
            return
        text = " ".join("".join(piece for _, _, piece in self._parts).split())
        loc, heading = self._parts[0][0], max(level for _, level, _ in self._parts)
        self._lines.append(Line(text, loc, heading))
        self._parts = []

    def finish(self) -> list[Line]:
        self._flush()
        return self._lines
