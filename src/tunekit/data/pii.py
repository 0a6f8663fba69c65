"""Fast PII and secret detectors: e-mails, phones, card numbers, IBANs, IP addresses and API keys.

Used by `tunekit data check` (counting), data cleaning (redaction) and guardrails. Hand-written rather than
Presidio or similar: those need spaCy models (a download this tool must never require) and are far too slow
for 100k rows on a laptop CPU, and we want strict validation on candidates (Luhn, IBAN mod-97, the
`ipaddress` module, Shannon entropy) to keep false positives low. Each detector is one precompiled regex,
run only when a cheap prefilter (a substring test) says it could match; validation runs only on candidates.
Every step takes time linear in the text (the regexes run on RE2, see `_FOLDS`), because the text can be a
request of up to a megabyte; tests/test_linear_text.py holds each detector to that.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import re2

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


# The detectors run on RE2 (google-re2), whose automata take time linear in the text: the text is request
# data (the guard, the request log), and Python's backtracking `re` took 5 s on a private-key header followed
# by 40,000 spaces (issue #18). RE2 sees an ASCII copy of the text, one byte per character, so its offsets are
# the str's; every non-ASCII character becomes a stand-in byte for the classes Python's Unicode `\w`, `\d`
# and `\s` put it in, and the patterns list those stand-ins in their classes, so the ASCII-only classes of
# RE2 accept exactly what Python's did. Each fold is a one-character class, which `re` scans in linear time.
_FOLDS = (
    (re.compile("[\x01-\x07]"), "\x00"),  # real control characters 1-7 are "other" characters, like 0
    (re.compile("[\u0130\u0131]"), "\x05"),  # letters that Python's (?i) matches to i (İ ı), s (ſ), k (Kelvin)
    (re.compile("\u017f"), "\x06"),
    (re.compile("\u212a"), "\x07"),
    (re.compile(r"[^\D\x00-\x7f]"), "\x02"),  # other decimal digits: \d and \w
    (re.compile(r"[^\W\x00-\x7f]"), "\x01"),  # other word characters: \w
    (re.compile(r"[^\S\x00-\x7f]"), "\x03"),  # other white space: \s
    (re.compile(r"[^\x00-\x7f]"), "\x04"),  # anything else, lone surrogates included
)
_W = r"0-9A-Za-z_\x01\x02\x05-\x07"  # Python's \w, as the body of an RE2 class on folded text
_D = r"0-9\x02"  # \d
_S = r"\t-\r\x1c-\x1f \x03"  # \s


def _fold(text: str) -> bytes:
    text = _FOLDS[0][0].sub("\x00", text)
    if not text.isascii():
        for pattern, standin in _FOLDS[1:]:
            text = pattern.sub(standin, text)
    return text.encode("ascii")


def _anycase(fragment: str) -> str:
    """What (?i) did on the original text, as classes: each letter in both cases, plus the stand-in of the
    non-ASCII letters Python also matched to it (RE2's own (?i) would see only the stand-in)."""
    extra = {"i": r"\x05", "s": r"\x06", "k": r"\x07"}
    return re.sub("[a-z]", lambda m: f"[{m[0]}{m[0].upper()}{extra.get(m[0], '')}]", fragment)


def _re2(pattern: str) -> re2._Regexp:
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1  # folded text is ASCII: one byte is one character
    return re2.compile(pattern.encode("ascii"), options)


# RE2 has no lookaround and no backreferences. A backreference to a separator becomes one branch per
# separator. A lookbehind `(?<!X)` becomes `(?:\A|[^X])` consumed before group 1, the match proper, and a
# lookahead `(?!Y)` becomes the alternatives of what may follow, consumed after it: RE2's leftmost-first
# match then picks the same group 1 as backtracking did, shorter alternatives included, because the
# consumed context succeeds exactly where the lookaround did. `_scan` resumes where the context may overlap.
_EMAIL = _re2(
    rf"(?:\A|[^{_W}.%+-])([{_W}%+-][{_W}.%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{{2,24}})"
    rf"(?:\z|[^{_W}-])"
)
# A phone needs a leading + or typical grouping; dates, times, versions, prices and bare runs never match.
_PHONE = _re2(
    rf"(?:\A|[^{_W}+.-])("
    rf"\+[{_D}]{{1,3}}(?:[ .-]?\([{_D}]{{1,4}}\))?[ .-]?[{_D}]{{1,14}}(?:[ .-][{_D}]{{2,14}}){{0,5}}"  # +1-555-0123
    rf"|(?:1[ .-]?)?\([{_D}]{{3}}\) ?[{_D}]{{3}}[ .-][{_D}]{{4}}"  # (555) 123-4567
    rf"|(?:1[.-])?[{_D}]{{3}}(?:-[{_D}]{{3}}-|\.[{_D}]{{3}}\.)[{_D}]{{4}}"  # 555-123-4567, 555.123.4567
    rf"|[2-9][{_D}]{{2}} [{_D}]{{3}} [{_D}]{{4}}"  # 555 123 4567
    rf"|0[{_D}]{{1,4}}[ -][{_D}]{{3,8}}(?:[ -][{_D}]{{2,4}}){{0,2}}"  # 020 7946 0958 (national trunk prefix)
    rf")(?:\z|[^{_W}.-]|[.-](?:\z|[^{_D}]))"
)
# Card issuers start with 2-6; groupings 4-4-4-4(-3), 4-6-5 (Amex, first digit 3), 4-6-4 (Diners) or no
# separator. Not after a digit or +, nor after a digit and a dash (the second half of a longer number).
_GROUPED = rf"(?: [{_D}]{{4}}){{3}}(?: [{_D}]{{3}})?|(?:-[{_D}]{{4}}){{3}}(?:-[{_D}]{{3}})?"  # 4-4-4-4(-3)
_AMEX = rf" [{_D}]{{6}} [{_D}]{{4,5}}|-[{_D}]{{6}}-[{_D}]{{4,5}}"  # 4-6-5, 4-6-4
_CARD = _re2(
    rf"(?:\A-?|[^{_D}+-]|[^{_D}]-)([2-6](?:[{_D}]{{12,18}}|[{_D}]{{3}}(?:{_GROUPED}))|3[{_D}]{{3}}(?:{_AMEX}))"
    rf"(?:\z|[^{_D}-]|-(?:\z|[^{_D}]))"
)
_IBAN = _re2(
    rf"(?:\A|[^A-Za-z0-9])([A-Z]{{2}}[{_D}]{{2}}(?:[A-Z0-9]{{11,30}}|(?: [A-Z0-9]{{4}}){{2,7}}(?: [A-Z0-9]{{1,4}})?))"
    rf"(?:\z|[^A-Za-z0-9])"
)
_OCTET = rf"(?:25[0-5]|2[0-4][{_D}]|1[{_D}][{_D}]|[1-9]?[{_D}])"
_IPV4 = _re2(rf"(?:\A|[^{_D}.])({_OCTET}(?:\.{_OCTET}){{3}})(?:\z|[^{_D}.]|\.(?:\z|[^{_D}]))")
# An IPv6 candidate must hold two colons before any other character; that lookahead can reach past the
# 39 characters of the match, so `_ipv6s` checks it with `_IPV6_COLONS`.
_IPV6 = _re2(
    rf"(?:\A|[^{_W}:.])([0-9A-Fa-f:]{{2,39}}(?:\.[{_D}]{{1,3}}){{0,3}})(?:\z|[^{_W}:.-]|\.(?:\z|[^{_W}]))"
)
_IPV6_COLONS = _re2(r"[0-9A-Fa-f]*:[0-9A-Fa-f]*:")
# Group 1: the BEGIN line of a private key (no lookbehind: any character may precede it; `_PemBlocks` finds
# the rest of the block); group 2: a token shape, with group 3 the OpenAI-style key, whose entropy is checked.
_SECRET_SHAPE = _re2(
    r"(?:\A|(?s:.))(-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----)"
    rf"|(?:\A|[^{_W}-])((sk-(?:proj-)?[A-Za-z0-9_-]{{20,}})|(?:AKIA|ASIA)[0-9A-Z]{{16}}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|xox[baprs]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}|[sr]k_live_[0-9A-Za-z]{16,}"
    rf"|eyJ[A-Za-z0-9_-]{{5,}}\.eyJ[A-Za-z0-9_-]{{5,}}\.[A-Za-z0-9_-]*)(?:\z|[^{_W}-])"
)
# The rest of a PEM block, `\s*(?:Name: value\n)*[base64\s]*-----END ... PRIVATE KEY-----`, in anchored steps.
_PEM_SPACE = _re2(rf"[{_S}]*")
_PEM_HEADER = _re2(r"[A-Za-z-]+: ")
_PEM_HEADERS = _re2(r"(?:[A-Za-z-]+: [^\n]*\n)*")
_PEM_BODY = _re2(rf"[A-Za-z0-9+/={_S}]*")
_PEM_END = _re2(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
# Group 1: the assignment; group 2 its value, or group 3 a bearer token.
_SECRET_ASSIGN = _re2(
    r"(?:\A|[^A-Za-z0-9])("
    + _anycase(r"(?:api[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|(?:access[_-]?|auth[_-]?)?token"
               r"|password|passwd|pwd)")
    + rf"[\"']?[{_S}]*[:=][{_S}]*[\"']?([A-Za-z0-9_\-+/=.~!@#$%^&*]{{16,}})"
    + "|" + _anycase("bearer") + rf"[{_S}]+([A-Za-z0-9_\-.~+/]{{16,}}=*))"
)
_SHAPE_HINTS = ("sk-", "_", "AKIA", "ASIA", "xox", "AIza", "eyJ", "PRIVATE KEY")
_ASSIGN_WORDS = ("key", "secret", "token", "passw", "pwd", "bearer")
_DIGIT = re.compile(r"\d")  # one character: finds the first digit of a short candidate
# Needed by any phone or card (7+ digits, at most 2 separators apart) or IPv4: rows without it skip those.
_NUMERIC_SEED = _re2(rf"[{_D}](?:[ .()+-]{{0,2}}[{_D}]){{6}}|[{_D}]\.[{_D}]{{1,3}}\.[{_D}]{{1,3}}\.[{_D}]")


_Settle = Callable[[int, int, Any], int | None]


def _scan(
    regex: re2._Regexp, data: bytes, groups: tuple[int, ...] = (1,), settle: _Settle | None = None
) -> Iterator[tuple[int, int, Any]]:
    """(start, end, match) of the match proper (the first of `groups` that took part) for each match, in the
    order and with the overlaps `re.finditer` gave the pattern with lookarounds.

    The pattern consumes one character of context before the match proper (or none at the very start), so
    searching again from one character before the previous end finds the next match at or after that end,
    with its context free to be the previous match's last character, as a lookbehind's was.

    `settle(start, end, match)` may give a match another end, or None to drop it as a failed lookahead at
    its start made `re` move on; the search goes on after that first character, which callers guarantee the
    context class excludes (so no match can follow it directly).
    """
    pos, first, *others = 0, *groups
    while (m := regex.search(data, pos)) is not None:
        start, end = m.span(first)
        for group in others:
            if start >= 0:
                break
            start, end = m.span(group)
        if settle is not None and (end := settle(start, end, m)) is None:
            pos = start + 1
            continue
        yield start, end, m
        pos = max(end - 1, start + 1)


class _PemBlocks:
    """Where the PEM block whose BEGIN line ends at `pos` ends: after its END line, if it has one.

    As one optional group of the pattern, the block made `re`, and RE2's search loop alike, read every
    header line that follows a BEGIN line again for each BEGIN line among them: quadratic in text like
    `a: -----BEGIN PRIVATE KEY-----` (a valid header line) repeated. Only one parse of a block can succeed,
    all white space, then every header line, then all base64, then END (a header line starts with a name
    and a colon, which base64 cannot cross, so stopping before the last header line never reaches END), so
    each step is one anchored match, and each step's result is remembered for the BEGIN lines that share it:
    every scan then reads text no earlier scan read.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.headers = (0, 0)  # [start, end) of the last run of header lines read
        self.after = (-1, None)  # where base64 started last, and where its END line ended (None: no END)

    def end(self, pos: int) -> int | None:
        data = self.data
        first = _PEM_SPACE.match(data, pos).end()
        start, stop = self.headers
        if start <= first < stop:  # inside the last run: a header here runs on to that run's end
            body = stop if _PEM_HEADER.match(data, first) else first
        else:
            body = _PEM_HEADERS.match(data, first).end()
            self.headers = (first, body)
        if self.after[0] != body:
            end = _PEM_END.match(data, _PEM_BODY.match(data, body).end())
            self.after = (body, end.end() if end else None)
        return self.after[1]


def _emails(text: str, data: bytes) -> Iterator[PiiMatch]:
    if "@" in text:
        for start, end, _ in _scan(_EMAIL, data):
            yield PiiMatch("email", start, end, text[start:end])


def _phones(text: str, data: bytes) -> Iterator[PiiMatch]:
    for start, end, _ in _scan(_PHONE, data):
        if 7 <= sum(c.isdigit() for c in text[start:end]) <= 15:
            yield PiiMatch("phone", start, end, text[start:end])


def _cards(text: str, data: bytes) -> Iterator[PiiMatch]:
    for start, end, _ in _scan(_CARD, data):
        if luhn_valid(text[start:end]):
            yield PiiMatch("credit_card", start, end, text[start:end])


def _ibans(text: str, data: bytes) -> Iterator[PiiMatch]:
    for start, end, _ in _scan(_IBAN, data):
        cand = text[start:end]
        want = _IBAN_LENGTHS.get(cand[:2])
        if want and len(cand.replace(" ", "")) > want:  # spaced form ran into a following word: trim it
            seen = 0
            for i, ch in enumerate(cand):
                seen += ch != " "
                if seen == want:
                    cand, end = cand[: i + 1], start + i + 1
                    break
        if iban_valid(cand):
            yield PiiMatch("iban", start, end, cand)


def _ipv4s(text: str, data: bytes) -> Iterator[PiiMatch]:
    for start, end, _ in _scan(_IPV4, data):
        yield PiiMatch("ip_address", start, end, text[start:end])


def _ipv6s(text: str, data: bytes) -> Iterator[PiiMatch]:
    if "::" in text or text.count(":") >= 7:
        # The colon check reads only hex digits and colons, none of which can precede a candidate, so the
        # checks of successive candidates read text no other check reads: linear in all.
        def two_colons(start: int, end: int, m: Any) -> int | None:
            return end if _IPV6_COLONS.match(data, start) else None

        for start, end, _ in _scan(_IPV6, data, settle=two_colons):
            cand = text[start:end]
            if _DIGIT.search(cand):
                try:
                    ipaddress.IPv6Address(cand)
                except ValueError:
                    continue
                yield PiiMatch("ip_address", start, end, cand)


def _api_keys(text: str, data: bytes) -> Iterator[PiiMatch]:
    if any(h in text for h in _SHAPE_HINTS):
        blocks = _PemBlocks(data)

        def with_block(start: int, end: int, m: Any) -> int:
            return (blocks.end(end) or end) if m.start(1) >= 0 else end

        for start, end, m in _scan(_SECRET_SHAPE, data, groups=(1, 2), settle=with_block):
            key_start, key_end = m.span(3)
            key = text[key_start:key_end] if key_start >= 0 else None
            if key is None or (_entropy(key) >= 3.0 and _DIGIT.search(key)):
                yield PiiMatch("api_key", start, end, text[start:end])
    low = text.lower()
    if ("=" in text or ":" in text or "bearer" in low) and any(w in low for w in _ASSIGN_WORDS):
        for _, _, m in _scan(_SECRET_ASSIGN, data):
            start, end = m.span(2) if m.start(2) >= 0 else m.span(3)
            if _entropy(text[start:end]) >= 3.0:
                yield PiiMatch("api_key", start, end, text[start:end])


# kind, detector, needs _NUMERIC_SEED
_DETECTORS: list[tuple[str, Callable[[str, bytes], Iterator[PiiMatch]], bool]] = [
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
    if not wanted:
        return []
    data = _fold(text)
    numeric: bool | None = None
    found: list[PiiMatch] = []
    for kind, detect, seeded in _DETECTORS:
        if kind in wanted:
            if seeded and numeric is None:
                numeric = _NUMERIC_SEED.search(data) is not None
            if numeric or not seeded:
                found.extend(detect(text, data))
    if len(found) < 2:
        return found
    found = _drop_phones_inside_strong(found)
    found.sort(key=lambda m: (m.start, m.start - m.end, _PRIORITY[m.kind]))
    kept: list[PiiMatch] = []
    for m in found:
        if not kept or m.start >= kept[-1].end:
            kept.append(m)
    return kept


def _drop_phones_inside_strong(found: list[PiiMatch]) -> list[PiiMatch]:
    """`found` less the phones that overlap a card number or IBAN (checksummed, so the better reading). Bisects
    the strong spans by start, with the running maximum of their ends: testing every phone against every card
    was quadratic in text full of both."""
    strong = sorted((m.start, m.end) for m in found if m.kind in ("credit_card", "iban"))
    if not strong:
        return found
    starts = [s for s, _ in strong]
    max_end = list(accumulate((e for _, e in strong), max))

    def overlaps(m: PiiMatch) -> bool:
        before = bisect.bisect_left(starts, m.end)  # strong spans that start before the phone ends
        return before > 0 and max_end[before - 1] > m.start

    return [m for m in found if m.kind != "phone" or not overlaps(m)]


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
