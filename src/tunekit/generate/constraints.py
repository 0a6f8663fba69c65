"""Constrained decoding: a row's output is forced to match its Constraint (a JSON schema, any JSON object, a
regex, or one of a few labels) by zeroing, at every step, the probability of each token that would break it.

The grammar work is llguidance's (a maintained Rust library, also behind llama.cpp's and vLLM's structured
outputs): a matcher per row follows the tokens generated so far and writes the allowed next tokens as a
bitmask, ~50 us per row and step. What is ours is only the glue: compiling at submit time (so a schema it
cannot enforce is the client's 400 before anything is queued), filling every constrained row's mask in one
call, and applying the masks to those rows' logits. Rows without a constraint pay nothing.

    constraints = Constraints(tokenizer, vocab_size=49152, eos_ids={2})
    matcher = constraints.compile(Constraint.json_schema(schema))   # UserError naming what it cannot enforce
    apply_masks(logits, [(row, matcher), ...], constraints)          # before sampling
    matcher.consume_token(token)                                     # after sampling
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import torch

from tunekit.errors import MissingDependency, UserError
from tunekit.generate.types import Constraint

# Whitespace the JSON grammar allows between tokens, at most this many characters in a row: a model may keep
# its trained layout (`{"a": 1}`, small indents) but cannot loop on spaces until max_tokens.
JSON_WHITESPACE = r"(?:[\x20]?|\n[\x20]{0,8})"
# Client-sent schemas and patterns compile on the request's thread; these caps bound that work (llguidance's
# own defaults are generous for trusted grammars).
MAX_SPEC_CHARS = 64_000
MAX_CHOICES = 1_000
_BIT = torch.tensor([1 << i for i in range(31)] + [-(1 << 31)], dtype=torch.int32)  # int32's bit 31 is its sign


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:
        raise MissingDependency.of("llguidance", "constrained decoding", exc) from exc
    return llguidance


class Constraints:
    """Compiles Constraints into per-row matchers for one tokenizer. Thread-safe: requests compile on their own
    threads; the tokenizer's conversion (~1 s for a 50k vocabulary) happens once, on first use."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: frozenset[int]):
        self._hf_tokenizer, self.vocab_size, self._eos_ids = tokenizer, vocab_size, sorted(eos_ids)
        self._tokenizer: Any = None
        self._executor: Any = None
        self._lock = threading.Lock()

    def compile(self, constraint: Constraint) -> Any:
        """A fresh llguidance LLMatcher for one row, or a UserError saying what cannot be enforced."""
        llguidance = _llguidance()
        try:
            grammar = _grammar(llguidance, constraint)
        except (ValueError, TypeError) as exc:  # e.g. an integer past 64 bits in a schema: the client's input
            raise UserError(f"the {constraint.describe()} cannot be enforced: {exc}", where="constraint",
                            fix=_FIXES[constraint.kind]) from exc
        matcher = llguidance.LLMatcher(self._ll_tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise UserError(f"the {constraint.describe()} cannot be enforced: {matcher.get_error()}",
                            where="constraint", fix=_FIXES[constraint.kind])
        return matcher

    @property
    def executor(self) -> Any:
        """Fills many rows' masks in one call, on llguidance's own threads (the GIL released)."""
        with self._lock:
            if self._executor is None:
                self._executor = _llguidance().LLExecutor()
            return self._executor

    def _ll_tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                from llguidance.hf import from_tokenizer

                try:
                    self._tokenizer = from_tokenizer(self._hf_tokenizer, n_vocab=self.vocab_size,
                                                     eos_token=self._eos_ids)
                except ValueError as exc:  # a slow (Python) tokenizer: llguidance reads the Rust one
                    raise UserError(f"constrained decoding needs a fast tokenizer: {exc}", where="constraint") from exc
            return self._tokenizer


_FIXES = {
    "json_object": "send response_format json_object without a schema",
    "json_schema": "remove or simplify the schema feature named above",
    "regex": "use a regular expression without that construct (no look-around or back-references)",
    "choice": "send a non-empty list of distinct, non-empty labels",
}


def _grammar(llguidance: Any, constraint: Constraint) -> str:
    kind, value = constraint.kind, constraint.value
    options = {"whitespace_flexible": True, "whitespace_pattern": JSON_WHITESPACE}
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=options)
    if kind == "json_schema":
        if not isinstance(value, dict):
            raise UserError("a JSON schema must be an object", where="constraint", fix=_FIXES[kind])
        _check_size(json.dumps(value), kind)
        return llguidance.LLMatcher.grammar_from_json_schema(value, defaults=options)
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise UserError("a regex constraint needs a non-empty pattern", where="constraint", fix=_FIXES[kind])
        _check_size(value, kind)
        return llguidance.LLMatcher.grammar_from_regex(value)
    if kind == "choice":
        labels = list(value or ())
        if not labels or len(labels) > MAX_CHOICES or not all(isinstance(x, str) and x for x in labels):
            raise UserError(f"a choice needs 1 to {MAX_CHOICES} non-empty labels", where="constraint",
                            fix=_FIXES[kind])
        _check_size(json.dumps(labels), kind)
        # Lark string literals in JSON quoting: any label text is a literal, never grammar syntax.
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(x) for x in labels))
    raise UserError(f"unknown constraint kind {kind!r}", where="constraint",
                    fix="use json_object, json_schema, regex or choice")


def _check_size(text: str, kind: str) -> None:
    if len(text) > MAX_SPEC_CHARS:
        raise UserError(f"the {kind.replace('_', ' ')} is {len(text)} characters, above the limit of "
                        f"{MAX_SPEC_CHARS}", where="constraint", fix="send a smaller one")


def apply_masks(logits: torch.Tensor, rows: Sequence[tuple[int, Any]], constraints: Constraints) -> None:
    """Set to -inf, in place, the logits of every token that row's matcher does not allow next.

    `rows`: (row index in `logits`, matcher). llguidance writes one bit per token; unpacking them with a
    shift-and-mask over [rows, words, 32] costs ~0.1 ms for 32 rows of a 50k vocabulary."""
    if not rows:
        return
    words = (constraints.vocab_size + 31) // 32
    vocab = min(logits.shape[-1], words * 32)
    bitmask = torch.zeros((len(rows), words), dtype=torch.int32)
    targets = [(matcher, i) for i, (_, matcher) in enumerate(rows)]
    constraints.executor.unsafe_compute_mask_ptr(targets, bitmask.data_ptr(), words * 4, len(rows))
    allowed = (bitmask.unsqueeze(-1) & _BIT).ne(0).view(len(rows), words * 32)[:, :vocab]
    index = torch.tensor([row for row, _ in rows], device=logits.device)
    masked = logits[index]
    masked[:, :vocab].masked_fill_(~allowed.to(logits.device), float("-inf"))
    masked[:, vocab:] = float("-inf")  # logits past the tokenizer's vocabulary: never allowed
    logits[index] = masked
