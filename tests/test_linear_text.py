"""Text processing on request data takes time linear in the text, up to the server's body limit.

Each detector (PII, redaction, secrets, prompt injection, the output guard's code-fence check) runs on
adversarial inputs: runs of white space, repeated prefixes and the like, the shapes that made Python's
backtracking `re` quadratic (a private-key header and 40,000 spaces stalled a server for 5 s, 16,000
newlines took the injection check 6 s: issue #18). CPU time at each size is compared with the time at an
eighth of it, with room for a noisy shared machine (best of three, a factor 2.5 and 50 ms); quadratic time
grows 64-fold per step, far past that. The ladder starts small, so quadratic code fails in seconds rather
than hanging on a megabyte.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from itertools import pairwise

import pytest

from tunekit.config_stages import ServeConfig
from tunekit.data.answers import label_of_answer, parse_json_output
from tunekit.data.pii import find_pii, redact_pii
from tunekit.guard.injection import find_injection
from tunekit.guard.output import OutputRules, check_json_schema, schema_validator

# A request body's text has at most as many characters as the body has bytes.
LIMIT = ServeConfig.model_fields["max_body_bytes"].default
SIZES = (LIMIT // 512, LIMIT // 64, LIMIT // 8, LIMIT)  # about 2k, 16k, 125k and 1M characters
SLACK, FLOOR_S = 2.5, 0.05


def cpu_seconds(fn: Callable[[str], object], text: str, enough: float = 0.0) -> float:
    """Best of three CPU times; stops early once a run is within `enough`."""
    best = math.inf
    for _ in range(3):
        start = time.process_time()
        fn(text)
        best = min(best, time.process_time() - start)
        if best <= enough:
            break
    return best


def assert_linear(fn: Callable[[str], object], make: Callable[[int], str]) -> None:
    small = cpu_seconds(fn, make(SIZES[0]))
    for n, big_n in pairwise(SIZES):
        bound = (big_n / n) * small * SLACK + FLOOR_S
        big = cpu_seconds(fn, make(big_n), enough=bound)
        assert big <= bound, f"{big_n:,} characters took {big:.3f}s, {n:,} took {small:.4f}s: not linear"
        small = big


def repeat(prefix: str, unit: str) -> Callable[[int], str]:
    return lambda n: (prefix + unit * (n // len(unit) + 1))[:n]


def marks_in_descending_class(n: int) -> str:
    """Combining marks that canonical ordering must move (class 230 before 220): CPython's NFKC sorts them
    with an insertion sort."""
    return "a" + "\u0301" * (n // 2) + "\u0316" * (n - n // 2 - 1)


_JSON_RULES = OutputRules(schema_validator({"type": "object"}), (), LIMIT)

DETECTORS: dict[str, Callable[[str], object]] = {
    "find_pii": find_pii,
    "redact": redact_pii,
    "secrets": lambda text: find_pii(text, ["api_key"]),
    "injection": find_injection,
    "json_fence": lambda text: check_json_schema(text, _JSON_RULES, None),
    "answer_json": parse_json_output,  # the metrics' and citations' reader of model answers
    "answer_label": lambda text: label_of_answer(text, "label"),  # what serve runs on every answer
}
ALL = tuple(DETECTORS)
PII = ("find_pii", "redact")
SECRETS = ("find_pii", "redact", "secrets")

INPUTS: list[tuple[str, Callable[[int], str], tuple[str, ...]]] = [
    ("spaces", repeat("", " "), ALL),
    ("newlines", repeat("", "\n"), ALL),
    ("tabs", repeat("", "\t"), ALL),
    ("crlf", repeat("", "\r\n"), ALL),
    ("nbsp", repeat("", "\u00a0 "), ALL),
    ("accented", repeat("", "é"), ALL),
    ("marks", marks_in_descending_class, ("injection", "find_pii")),
    ("pem+spaces", repeat("-----BEGIN PRIVATE KEY-----", " "), SECRETS),
    ("pem+newlines", repeat("-----BEGIN PRIVATE KEY-----", "\n"), (*SECRETS, "injection")),
    ("pem+base64", repeat("-----BEGIN PRIVATE KEY-----\n", "QUJDRA==\n"), SECRETS),
    ("pem headers", repeat("", "a: -----BEGIN PRIVATE KEY-----\n"), SECRETS),
    ("pem lines", repeat("", "-----BEGIN RSA PRIVATE KEY-----"), SECRETS),
    ("sk-", repeat("sk-", "a"), SECRETS),
    ("sk- repeated", repeat("", "sk-"), SECRETS),
    ("jwt parts", repeat("", "eyJhbGci."), SECRETS),
    ("password=", repeat("", "password="), SECRETS),
    ("password: spaces", repeat("password:", " "), SECRETS),
    ("bearer", repeat("", "bearer "), SECRETS),
    ("a@", repeat("", "a@"), PII),
    ("a.", repeat("", "a."), PII),
    ("a@b.", repeat("a@", "b."), PII),
    ("emails", repeat("", "a@b.co "), PII),
    ("1-", repeat("", "1-"), PII),
    ("1.", repeat("", "1."), PII),
    ("1 space", repeat("", "1 "), PII),
    ("digits", repeat("", "4"), PII),
    ("other digits", repeat("", "٤"), PII),
    ("+1", repeat("", "+1 "), PII),
    ("cards and phones", repeat("", "4111 1111 1111 1111 (555) 123-4567 "), PII),
    ("ibans and phones", repeat("", "DE89 3704 0044 0532 0130 00 020 7946 0958 "), PII),
    ("hex and colons", repeat("", "a:"), PII),
    ("ipv6-ish", repeat("", "::1."), PII),
    ("im_start", repeat("", "<|im_start|>system"), ("injection",)),
    ("newline system", repeat("", "\nsystem"), ("injection",)),
    ("newline hash system:", repeat("", "\n# system:"), ("injection",)),
    ("ignore all previous", repeat("", "ignore all previous "), ("injection",)),
    ("pretend no", repeat("", "pretend you have no "), ("injection",)),
    ("reveal your", repeat("", "reveal your "), ("injection",)),
    ("fence+newlines", repeat("```json\n", "\n"), ("json_fence",)),
    ("fence+spaces", repeat("```json\n", " "), ("json_fence", "answer_json", "answer_label")),
    ("fence+tabs", repeat("```json", "\t"), ("json_fence", "answer_json", "answer_label")),
    ("fence+newlines (answer)", repeat("```json", "\n"), ("answer_json", "answer_label")),
]


@pytest.mark.parametrize(
    ("make", "detector"),
    [pytest.param(make, d, id=f"{name}-{d}") for name, make, detectors in INPUTS for d in detectors],
)
def test_time_grows_linearly(make: Callable[[int], str], detector: str) -> None:
    assert_linear(DETECTORS[detector], make)


def test_the_largest_input_is_the_body_limit() -> None:
    assert SIZES[-1] == LIMIT >= 1_000_000


def test_the_answer_fence_reader_agrees_with_the_regex_it_replaced() -> None:
    # strip_code_fence replaced this backtracking pattern; on short texts the pattern is fast and is the spec.
    import re

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tunekit.data.answers import strip_code_fence

    spec = re.compile(r"^\s*```[\w+-]*[ \t]*\n?(.*?)\n?[ \t]*```\s*$", re.DOTALL)
    pieces = st.sampled_from(["```", "`", "json", "é", "+", "-", "_", " ", "\t", "\n", "\r", "\u00a0", "{}", "a"])

    @settings(max_examples=3000, deadline=None)
    @given(st.lists(pieces, max_size=12).map("".join))
    def agrees(text: str) -> None:
        match = spec.match(text)
        assert strip_code_fence(text) == (match.group(1) if match else text)

    agrees()
