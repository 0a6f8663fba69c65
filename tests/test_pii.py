"""PII detectors: true positives and tricky negatives per kind, redaction, properties on arbitrary text."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunekit.data.pii import PII_KINDS, PiiMatch, find_pii, iban_valid, luhn_valid, redact_pii


def found(text: str, kind: str) -> list[str]:
    return [m.text for m in find_pii(text) if m.kind == kind]


POSITIVES = {
    "email": ["john.doe@example.com", "j.o+tag@mail.example.co.uk", "ALICE_99@sub-domain.io", "x%y@host.dev"],
    "phone": [
        "(555) 123-4567", "555-123-4567", "555.123.4567", "+44 20 7946 0958", "+1-555-0123",
        "+1 (555) 123-4567", "+33 1 23 45 67 89", "+4915112345678", "1-800-555-1234", "020 7946 0958",
    ],
    "credit_card": [
        "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5500 0000 0000 0004",
        "3782 822463 10005", "378282246310005", "6011111111111117",
    ],
    "iban": [
        "DE89 3704 0044 0532 0130 00", "DE89370400440532013000", "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432", "FR14 2004 1010 0505 0001 3M02 606", "NL91ABNA0417164300",
        "ES9121000418450200051332",
    ],
    "ip_address": [
        "192.168.1.1", "10.0.0.255", "8.8.8.8", "255.255.255.0", "2001:db8::1", "::1",
        "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "::ffff:192.0.2.1",
    ],
    "api_key": [
        "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL",
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_Q-7",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a1B2c3D4e5" * 3 + "F6g7h8",
        "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz0123456789ABCDEF",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "AIzaSyA-1234567890abcdefghijklmnopqrstu",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_51H8xYzAbCdEfGhIjKlMnOp",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7x\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
    ],
}


@pytest.mark.parametrize(("kind", "value"), [(k, v) for k, vs in POSITIVES.items() for v in vs])
def test_true_positives_in_context(kind: str, value: str) -> None:
    text = f"Hi, here it is: {value}. Thanks!"
    assert found(text, kind) == [value]
    assert find_pii(text) == [PiiMatch(kind, 16, 16 + len(value), value)]


NEGATIVES = {
    "phone": [
        "The meeting is on 2024-01-15 at 12:30:45.", "Released in 2023, version 1.2.3 and 10.4.1.",
        "It costs $1,234.56 or 12.99 EUR.", "Order 123456789 shipped.", "Score +5 to 120 of 100 200 300.",
        "ISBN 978-3-16-148410-0", "call 555-1234", "between 15.01.2024 and 20.01.2024",
    ],
    "credit_card": [
        "4111111111111112", "4111 1111 1111 1112", "1234 5678 9012 3456", "order id 9876543210123456",
        "timestamp 1700000000000", "ref 1234-5678",
    ],
    "iban": [
        "DE89 3704 0044 0532 0130 01", "DE89370400440532013001", "GB82WEST1234569876543", "US12345678901234",
        "ISO9001 certified", "ABCD 1234 EFGH 5678",
    ],
    "ip_address": [
        "999.1.1.1", "256.1.2.3", "version 1.2.3.4.5", "1.2.3", "at 12:30:45", "std::vector<int>",
        "MAC 00:1A:2B:3C:4D:5E", "1.2.3.4.5.6",
    ],
    "api_key": [
        "uuid 123e4567-e89b-12d3-a456-426614174000", "use sk-learn-compatible-estimators-everywhere",
        "the secret: tomorrow", "password=hunter2", "token=aaaaaaaaaaaaaaaaaaaaaaaa", "keyboard tokens",
        "AKIA1234", "sha 9b2f5c3e1d4a6f7e8c9b0a1d2e3f4a5b6c7d8e9f", "eyJ not a jwt",
    ],
    "email": ["user at example dot com", "@handle", "a@b", "name@localhost", "foo@bar.c"],
}


@pytest.mark.parametrize(("kind", "text"), [(k, t) for k, ts in NEGATIVES.items() for t in ts])
def test_tricky_negatives(kind: str, text: str) -> None:
    assert found(text, kind) == []


def test_plain_prose_has_no_pii() -> None:
    text = (
        "In 2023 we shipped 3 releases (v2.1.0, v2.2.0 and 3.0), cut costs by 12.5% to $4,999.00 and met "
        "on 2024-03-01 at 09:30. See section 4.2.1 and page 17; ticket #48213 is closed."
    )
    assert find_pii(text) == []


def test_generic_assignments_report_only_the_value() -> None:
    text = 'config: api_key="a8F3kq93LmZ0pQ7vX2rT" and SECRET_KEY = Zx9!kP2#qL7m$Tn4wR'
    assert found(text, "api_key") == ["a8F3kq93LmZ0pQ7vX2rT", "Zx9!kP2#qL7m$Tn4wR"]
    assert found("Authorization: Bearer a1B2c3D4e5F6g7H8i9J0kLmN", "api_key") == ["a1B2c3D4e5F6g7H8i9J0kLmN"]


def test_unicode_classes_and_shared_context() -> None:
    """Python's Unicode \\w and \\d, its case-insensitive matching and its lookarounds, all of which the
    linear-time engine stands in for."""
    assert found("josé.garcía@example.com", "email") == ["josé.garcía@example.com"]
    assert found("call +٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨ now", "phone") == ["+٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨"]  # Arabic-Indic digits
    assert found("api_\u212aey: a8F3kq93LmZ0pQ7vX2rT", "api_key") == ["a8F3kq93LmZ0pQ7vX2rT"]  # Kelvin sign
    assert found("a@b.co,c@d.co", "email") == ["a@b.co", "c@d.co"]  # one comma ends one and starts the next
    assert found("4111111111111111 4111111111111111", "credit_card") == ["4111111111111111"] * 2
    assert found("ip 2001:db8::1 and fe80::1", "ip_address") == ["2001:db8::1", "fe80::1"]


def test_private_key_blocks() -> None:
    block = ("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,3F17F5316E2BAC89\n\n"
             "MIIEpAIBAAKCAQEA7x\n-----END RSA PRIVATE KEY-----")
    assert found(f"my key:\n{block}\nthanks", "api_key") == [block]
    header = "-----BEGIN PRIVATE KEY-----"
    assert found(f"a: {header}\n" * 3, "api_key") == [header] * 3  # BEGIN lines inside header lines, no END
    assert found(header + " " * 10_000, "api_key") == [header]


def test_checksums() -> None:
    assert luhn_valid("4111 1111 1111 1111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("") and not luhn_valid("12a4")
    assert iban_valid("de89 3704 0044 0532 0130 00") and iban_valid("NO9386011117947")
    assert not iban_valid("DE8937040044053201300")  # DE needs 22 characters
    assert not iban_valid("GB82WEST12345698765431") and not iban_valid("") and not iban_valid("1234")


def test_overlaps_prefer_card_over_phone_and_are_sorted() -> None:
    text = "pay 4111-1111-1111-1111 or mail a@b.io, call +1 555 123 4567 from 10.0.0.1"
    kinds = [m.kind for m in find_pii(text)]
    assert kinds == ["credit_card", "email", "phone", "ip_address"]


def test_kinds_filter_and_unknown_kind() -> None:
    text = "mail a@b.io from 10.0.0.1"
    assert [m.kind for m in find_pii(text, ["ip_address"])] == ["ip_address"]
    assert [m.kind for m in find_pii(text, "email")] == ["email"]
    assert find_pii(text, []) == []
    with pytest.raises(ValueError, match="allowed: email, phone"):
        find_pii(text, ["email", "ssn"])


def test_redaction() -> None:
    text = "Mail john@example.com or call (555) 123-4567; card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE."
    assert redact_pii(text) == "Mail [EMAIL] or call [PHONE]; card [CREDIT_CARD], key [API_KEY]."
    assert redact_pii(text, ["email"]).startswith("Mail [EMAIL] or call (555) 123-4567")
    assert redact_pii("a@b.io", placeholder="<{kind}>") == "<email>"
    assert redact_pii("nothing here") == "nothing here"


# Text built from PII-ish fragments and separators, so the properties exercise seams between matches.
_FRAGMENTS = st.sampled_from(
    ["a@b.io", "x.y@mail.co.uk", "4111 1111 1111 1111", "4111111111111111", "+44 20 7946 0958",
     "(555) 123-4567", "555-123-4567", "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432",
     "192.168.0.1", "2001:db8::1",
     "AKIAIOSFODNN7EXAMPLE", "api_key=a8F3kq93LmZ0pQ7vX2rT", "1.2.3", "2024-01-15", "::", ".", "-", " ", "@",
     ":", "+", "1", "a", "[EMAIL]", "[PHONE]", "_", "=", "\n"]
)
_TEXT = st.one_of(st.text(max_size=200), st.lists(st.one_of(_FRAGMENTS, st.text(max_size=3))).map("".join))


@settings(max_examples=400, deadline=None)
@given(_TEXT)
def test_find_pii_properties(text: str) -> None:
    matches = find_pii(text)
    for m in matches:
        assert m.kind in PII_KINDS
        assert 0 <= m.start < m.end <= len(text) and text[m.start : m.end] == m.text
    for a, b in itertools.pairwise(matches):
        assert a.end <= b.start
    once = redact_pii(text)
    assert redact_pii(once) == once


def test_speed_sanity() -> None:
    """Not a benchmark (no timing assertion): 20k typical rows simply go through without pathologies."""
    rng = random.Random(0)
    words = ["the", "a", "model", "data", "we", "to", "of", "and", "in", "is", "for", "on", "with", "that",
             "answer", "question", "tokens", "key", "2023", "3", "v1.2", "$5", "(see", "e.g.", "10:30"]
    rows = [" ".join(rng.choice(words) for _ in range(40))[:200] for _ in range(20_000)]
    rows[::100] = ["reach me at jane@corp.com or +1 555 123 4567"] * len(rows[::100])
    hits = sum(bool(find_pii(row)) for row in rows)
    assert hits == len(rows[::100])
