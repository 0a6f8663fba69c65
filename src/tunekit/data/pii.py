"""Fast PII and secret detectors: e-mails, phones, card numbers, IBANs, IP addresses and API keys.

Used by `tunekit data check` (counting), data cleaning (redaction) and guardrails. Hand-written rather than
Presidio or similar: those need spaCy models (a download this tool must never require) and are far too slow
for 100k rows on a laptop CPU, and we want strict validation on candidates (Luhn, IBAN mod-97, the
`ipaddress` module, Shannon entropy) to keep false positives low. Each detector is one precompiled regex,
run only when a cheap prefilter (a substring test) says it could match; validation runs only on candidates.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from tunekit.config import PII_KINDS

# Ties (same start, same length) go to the earlier kind here.
_PRIORITY = {k: i for i, k in enumerate(("api_key", "credit_card", "iban", "email", "ip_address", "phone"))}


@dataclass(frozen=True)
class PiiMatch:
    kind: str  # one of PII_KINDS
    start: int
    end: int
    text: str


def luhn_valid(digits: str) -> bool:
    """Luhn checksum of a card number; spaces and dashes are ignored."""
    digits = digits.replace(" ", "").replace("-", "")
    if len(digits) < 2 or not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# IBAN length per country (ISO 13616 registry); others fall back to 15..34.
_IBAN_LENGTHS = {
    country: int(n)
    for country, n in re.findall(
        r"([A-Z]{2})(\d\d)",
        "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 EG29 "
        "ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 "
        "LB28 LC32 LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 "
        "RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 TL23 TN24 TR26 UA29 VA22 VG24 XK20",
    )
}


def iban_valid(candidate: str) -> bool:
    """ISO 13616 check: country code, two check digits, BBAN, country length, mod-97 == 1."""
    iban = candidate.replace(" ", "").upper()
    if not (iban.isascii() and iban.isalnum() and iban[:2].isalpha() and iban[2:4].isdigit()):
        return False
    expected = _IBAN_LENGTHS.get(iban[:2])
    if (len(iban) != expected) if expected else not 15 <= len(iban) <= 34:
        return False
    return int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w%+-][\w.%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![\w-])"
)
# A phone needs a leading + or typical grouping; dates, times, versions, prices and bare runs never match.
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?[ .-]?\d{1,14}(?:[ .-]\d{2,14}){0,5}"  # +44 20 7946 0958, +1-555-0123
    r"|(?:1[ .-]?)?\(\d{3}\) ?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|(?:1[.-])?\d{3}(?P<s2>[.-])\d{3}(?P=s2)\d{4}"  # 555-123-4567, 555.123.4567
    r"|[2-9]\d{2} \d{3} \d{4}"  # 555 123 4567
    r"|0\d{1,4}[ -]\d{3,8}(?:[ -]\d{2,4}){0,2}"  # 020 7946 0958 (national trunk prefix)
    r")(?!\w|[.-]\d)"
)
# Card issuers start with 2-6; groupings 4-4-4-4(-3), 4-6-5 (Amex), 4-6-4 (Diners) or no separator.
# (Patterns that start with a character class rather than a lookbehind let `re` skip ahead fast.)
_CARD = re.compile(
    r"[2-6](?<![\d+][2-6])(?<!\d-[2-6])(?:\d{12,18}"
    r"|\d{3}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{4}(?:(?P=s)\d{3})?"
    r"|(?<=3)\d{3}(?P<t>[ -])\d{6}(?P=t)\d{4,5})(?!\d|-\d)"
)
_IBAN = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}"
    r"(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)(?![A-Za-z0-9])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}(?:\.\d{1,3}){0,3}(?![\w:-]|\.\w)"
)
_SECRET_SHAPE = re.compile(
    r"(?P<pem>-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"  # + the block up to END, if base64
    r"(?:\s*(?:[A-Za-z-]+: [^\n]*\n)*[A-Za-z0-9+/=\s]*-----END [A-Z0-9 ]*PRIVATE KEY-----)?)"
    r"|(?<![\w-])(?:(?P<openai>sk-(?:proj-)?[A-Za-z0-9_-]{20,})|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|xox[baprs]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}|[sr]k_live_[0-9A-Za-z]{16,}"
    r"|eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)(?![\w-])",
)
_SECRET_ASSIGN = re.compile(
    r"(?<![A-Za-z0-9])(?i:api[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|(?:access[_-]?|auth[_-]?)?token"
    r"|password|passwd|pwd)[\"']?\s*[:=]\s*[\"']?(?P<value>[A-Za-z0-9_\-+/=.~!@#$%^&*]{16,})"
    r"|(?<![A-Za-z0-9])(?i:bearer)\s+(?P<bearer>[A-Za-z0-9_\-.~+/]{16,}=*)"
)
_SHAPE_HINTS = ("sk-", "_", "AKIA", "ASIA", "xox", "AIza", "eyJ", "PRIVATE KEY")
_ASSIGN_WORDS = ("key", "secret", "token", "passw", "pwd", "bearer")
_DIGIT = re.compile(r"\d")
# Needed by any phone or card (7+ digits, at most 2 separators apart) or IPv4: rows without it skip those.
_NUMERIC_SEED = re.compile(r"\d(?:[ .()+-]{0,2}\d){6}|\d\.\d{1,3}\.\d{1,3}\.\d")


def _emails(text: str) -> Iterator[PiiMatch]:
    if "@" in text:
        for m in _EMAIL.finditer(text):
            yield PiiMatch("email", m.start(), m.end(), m.group())


def _phones(text: str) -> Iterator[PiiMatch]:
    for m in _PHONE.finditer(text):
        if 7 <= sum(c.isdigit() for c in m.group()) <= 15:
            yield PiiMatch("phone", m.start(), m.end(), m.group())


def _cards(text: str) -> Iterator[PiiMatch]:
    for m in _CARD.finditer(text):
        if luhn_valid(m.group()):
            yield PiiMatch("credit_card", m.start(), m.end(), m.group())


def _ibans(text: str) -> Iterator[PiiMatch]:
    for m in _IBAN.finditer(text):
        cand, end = m.group(), m.end()
        want = _IBAN_LENGTHS.get(cand[:2])
        if want and len(cand.replace(" ", "")) > want:  # spaced form ran into a following word: trim it
            seen = 0
            for i, ch in enumerate(cand):
                seen += ch != " "
                if seen == want:
                    cand, end = cand[: i + 1], m.start() + i + 1
                    break
        if iban_valid(cand):
            yield PiiMatch("iban", m.start(), end, cand)


def _ipv4s(text: str) -> Iterator[PiiMatch]:
    for m in _IPV4.finditer(text):
        yield PiiMatch("ip_address", m.start(), m.end(), m.group())


def _ipv6s(text: str) -> Iterator[PiiMatch]:
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            cand = m.group()
            if _DIGIT.search(cand):
                try:
                    ipaddress.IPv6Address(cand)
                except ValueError:
                    continue
                yield PiiMatch("ip_address", m.start(), m.end(), cand)


def _api_keys(text: str) -> Iterator[PiiMatch]:
    if any(h in text for h in _SHAPE_HINTS):
        for m in _SECRET_SHAPE.finditer(text):
            key = m.group("openai")
            if key is None or (_entropy(key) >= 3.0 and _DIGIT.search(key)):
                yield PiiMatch("api_key", m.start(), m.end(), m.group())
    low = text.lower()
    if ("=" in text or ":" in text or "bearer" in low) and any(w in low for w in _ASSIGN_WORDS):
        for m in _SECRET_ASSIGN.finditer(text):
            group = "value" if m.group("value") else "bearer"
            if _entropy(m.group(group)) >= 3.0:
                yield PiiMatch("api_key", m.start(group), m.end(group), m.group(group))


# kind, detector, needs _NUMERIC_SEED
_DETECTORS: list[tuple[str, Callable[[str], Iterator[PiiMatch]], bool]] = [
    ("email", _emails, False), ("phone", _phones, True), ("credit_card", _cards, True),
    ("iban", _ibans, False), ("ip_address", _ipv4s, True), ("ip_address", _ipv6s, False),
    ("api_key", _api_keys, False),
]


def _resolve(kinds: Iterable[str] | None) -> tuple[str, ...]:
    if kinds is None:
        return PII_KINDS
    wanted = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if bad := sorted(set(wanted) - set(PII_KINDS)):
        raise ValueError(f"unknown PII kind(s) {bad}; allowed: {', '.join(PII_KINDS)}")
    return tuple(k for k in PII_KINDS if k in wanted)


def find_pii(text: str, kinds: Iterable[str] | None = None) -> list[PiiMatch]:
    """All PII in `text`, sorted by start and non-overlapping (earliest, then longest, wins; a card number
    or IBAN beats a phone number it overlaps)."""
    wanted = _resolve(kinds)
    numeric: bool | None = None
    found: list[PiiMatch] = []
    for kind, detect, seeded in _DETECTORS:
        if kind in wanted:
            if seeded and numeric is None:
                numeric = _NUMERIC_SEED.search(text) is not None
            if numeric or not seeded:
                found.extend(detect(text))
    if len(found) < 2:
        return found
    strong = [(m.start, m.end) for m in found if m.kind in ("credit_card", "iban")]
    if strong:
        found = [f for f in found if f.kind != "phone" or all(f.end <= s or e <= f.start for s, e in strong)]
    found.sort(key=lambda m: (m.start, m.start - m.end, _PRIORITY[m.kind]))
    kept: list[PiiMatch] = []
    for m in found:
        if not kept or m.start >= kept[-1].end:
            kept.append(m)
    return kept


def redact_pii(text: str, kinds: Iterable[str] | None = None, placeholder: str = "[{KIND}]") -> str:
    """Replace each match by `placeholder`, where {KIND} is the upper-case kind ([EMAIL], [CREDIT_CARD])
    and {kind} the kind itself. Repeats until nothing more is found: removing a match can expose another
    at the seam (`a@b.io4111...` is an e-mail only once the card is gone); redaction must be idempotent."""
    for _ in range(8):  # each pass consumes non-placeholder text, so this settles in two passes in practice
        matches = find_pii(text, kinds)
        if not matches:
            break
        parts: list[str] = []
        pos = 0
        for m in matches:
            parts.append(text[pos : m.start])
            parts.append(placeholder.replace("{KIND}", m.kind.upper()).replace("{kind}", m.kind))
            pos = m.end
        redacted = "".join(parts) + text[pos:]
        if redacted == text:
            break
        text = redacted
    return text
