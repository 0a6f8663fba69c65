"""Cleaning: unicode and whitespace normalisation, and what to do with PII (keep, redact, drop)."""

from __future__ import annotations

import re
import unicodedata

from tunekit.data.pii import find_pii, redact_pii
from tunekit.data.records import Example

# Zero-width and control characters (except tab and newline) are invisible and only confuse tokenizers.
_INVISIBLE = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _INVISIBLE.sub("", text)
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def normalize_example(example: Example) -> None:
    for message in example.messages:
        message["content"] = normalize_text(message["content"])
    if example.label is not None:
        example.label = normalize_text(example.label)


def pii_kinds_in(example: Example, kinds: list[str] | None = None) -> list[str]:
    return sorted({m.kind for msg in example.messages for m in find_pii(msg["content"], kinds)})


def redact_example(example: Example, kinds: list[str] | None = None) -> bool:
    """Replace PII in every turn by a placeholder such as [EMAIL]; True when anything changed."""
    changed = False
    for message in example.messages:
        redacted = redact_pii(message["content"], kinds)
        changed |= redacted != message["content"]
        message["content"] = redacted
    return changed
