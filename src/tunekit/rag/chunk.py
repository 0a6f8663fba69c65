"""Chunking: split at headings, then by size with overlap, never losing where a chunk came from.

Every chunk knows the first and last source line (or PDF page) it covers, so an answer that cites it
can point a reader at the exact place. Overlap is made of whole lines, or of whole words when a line
is long, so a chunk never starts or ends in the middle of a word.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from tunekit.errors import UserError
from tunekit.rag.readers import Line

# Lines longer than this are split into word-aligned pieces so overlap can still carry whole pieces;
# the floor keeps a tiny overlap setting from cutting text into single words.
_MIN_PIECE_CHARS = 40


@dataclass(frozen=True)
class Chunk:
    text: str
    loc_start: int  # first source line (or PDF page) in the chunk
    loc_end: int  # last one, inclusive
    heading: str  # heading trail, e.g. "Billing > Refunds"; "" before the first heading


def chunk_lines(lines: list[Line], *, chunk_chars: int, overlap: int) -> list[Chunk]:
    """Chunks of at most `chunk_chars` characters (a word longer than that is cut), split at headings;
    neighbours in one section share up to `overlap` characters."""
    if overlap >= chunk_chars:
        raise UserError(
            f"chunk overlap ({overlap}) must be smaller than the chunk size ({chunk_chars})",
            where="rag.chunk_overlap",
            fix="lower rag.chunk_overlap or raise rag.chunk_chars",
        )
    piece_chars = min(max(_MIN_PIECE_CHARS, overlap), chunk_chars) if overlap else chunk_chars
    chunks: list[Chunk] = []
    for trail, section in _sections(list(enumerate(lines))):
        pieces = [piece for number, line in section for piece in _split_line(number, line, piece_chars)]
        chunks.extend(_pack(pieces, trail, chunk_chars, overlap))
    return chunks


@dataclass(frozen=True)
class _Piece:
    text: str
    loc: int
    line: int  # index of the source line; pieces of one line share it (PDF lines of one page share loc)


def _sections(lines: list[tuple[int, Line]]) -> Iterator[tuple[str, list[tuple[int, Line]]]]:
    """Runs of lines between headings, each with its heading trail.

    A heading directly followed by another heading (a title above its first subsection) joins the next
    section instead of becoming a chunk that holds nothing but a title.
    """
    trail: list[tuple[int, str]] = []
    current: list[tuple[int, Line]] = []
    for number, line in lines:
        if line.heading and _has_body(current):
            yield _trail_text(trail), current
            current = []
        if line.heading:
            trail = [(level, text) for level, text in trail if level < line.heading]
            trail.append((line.heading, line.text.strip().strip("#").strip()))
        current.append((number, line))
    if any(line.text.strip() for _, line in current):
        yield _trail_text(trail), current


def _has_body(lines: list[tuple[int, Line]]) -> bool:
    return any(line.text.strip() and not line.heading for _, line in lines)


def _trail_text(trail: list[tuple[int, str]]) -> str:
    return " > ".join(text for _, text in trail if text)


def _split_line(number: int, line: Line, limit: int) -> Iterator[_Piece]:
    """The line as pieces of at most `limit` characters, cut after a space where there is one.

    Pieces keep every character, so joining the pieces of one line gives the line back exactly.
    """
    text = line.text
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        cut = cut + 1 if cut > 0 else limit
        yield _Piece(text[:cut], line.loc, number)
        text = text[cut:]
    yield _Piece(text, line.loc, number)


def _pack(pieces: list[_Piece], trail: str, chunk_chars: int, overlap: int) -> Iterator[Chunk]:
    current: list[_Piece] = []
    for piece in pieces:
        if current and _size([*current, piece]) > chunk_chars:
            chunk = _make_chunk(current, trail)
            if chunk:
                yield chunk
            current = _carry(current, piece, chunk_chars, overlap)
        current.append(piece)
    chunk = _make_chunk(current, trail)
    if chunk:
        yield chunk


def _carry(previous: list[_Piece], following: _Piece, chunk_chars: int, overlap: int) -> list[_Piece]:
    """The tail of the chunk just written that starts the next one: at most `overlap` characters,
    never the whole previous chunk (the next one must move forward) and never so much that the next
    piece no longer fits."""
    carry: list[_Piece] = []
    for piece in reversed(previous[1:]):
        if _size([piece, *carry]) > overlap:
            break
        carry.insert(0, piece)
    while carry and _size([*carry, following]) > chunk_chars:
        carry.pop(0)
    while carry and not carry[0].text.strip():
        carry.pop(0)  # a chunk does not start with blank lines
    return carry


def _size(pieces: list[_Piece]) -> int:
    """Characters of the joined text: pieces of one line join directly, lines join with a newline."""
    return sum(len(p.text) for p in pieces) + sum(a.line != b.line for a, b in itertools.pairwise(pieces))


def _make_chunk(pieces: list[_Piece], trail: str) -> Chunk | None:
    kept = list(pieces)
    while kept and not kept[0].text.strip():
        kept.pop(0)
    while kept and not kept[-1].text.strip():
        kept.pop()
    if not kept:
        return None
    text = kept[0].text
    for before, piece in itertools.pairwise(kept):
        text += ("\n" if piece.line != before.line else "") + piece.text
    return Chunk(text.strip(), kept[0].loc, kept[-1].loc, trail)


def search_text(heading: str, text: str) -> str:
    """What is embedded and matched by BM25: the heading trail gives a chunk cut from the middle of a
    section the words of its title (a chunk about "Refunds" that never says "refund" still matches)."""
    return f"{heading}\n{text}" if heading else text
