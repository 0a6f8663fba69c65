"""Input policies: each looks at a conversation and returns the (possibly redacted) messages and one event.

Every message is inspected for PII, injection and denied topics, whatever its role: over the API the
client writes the system and developer turns too, so an injection moved into a system message must not
pass. The operator's own text is the only trusted text: a deployment's system prompt, passed as leading
turns that `Guardrails.check_input(trusted=N)` skips, and grounding instructions, added after these checks.
The token limit counts the whole conversation, because that is what
the model reads. Reasons never quote PII: the request log must not become a second copy of it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunekit.data.pii import find_pii, redact_pii
from tunekit.guard.events import GuardEvent
from tunekit.guard.injection import find_injection, normalize_text

TokenCounter = Callable[[list[dict]], int]
_WORDISH = re.compile(r"\w+|[^\w\s]")  # a run of one class or one character: `re` is linear on it


@dataclass(frozen=True)
class NamedPattern:
    key: str  # the config key it came from, e.g. "guard.denied_topics[2]"
    source: str
    regex: Any  # compiled on RE2 (see guard.policies)

    def search(self, text: str) -> Any:
        return self.regex.search(normalize_text(text))


@dataclass(frozen=True)
class InputRules:
    pii_action: str  # "redact" | "block"
    pii_kinds: tuple[str, ...] | None
    denied_topics: tuple[NamedPattern, ...]
    max_input_tokens: int
    count_tokens: TokenCounter
    token_unit: str  # "tokens" or "words" (the fallback counter), for the reason text


def message_texts(message: dict) -> list[str]:
    """The text of a chat message: a string, or the text parts of an OpenAI-style content list."""
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def _map_text(message: dict, fn: Callable[[str], str]) -> dict:
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": fn(content)}
    if isinstance(content, list):
        parts = [{**p, "text": fn(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                 for p in content]
        return {**message, "content": parts}
    return message


def _client_texts(messages: list[dict]) -> list[tuple[int, str]]:
    return [(i, text) for i, m in enumerate(messages) for text in message_texts(m)]


def check_pii(messages: list[dict], rules: InputRules) -> tuple[list[dict], GuardEvent]:
    kinds: Counter[str] = Counter()
    for _, text in _client_texts(messages):
        kinds.update(m.kind for m in find_pii(text, rules.pii_kinds))
    if not kinds:
        return messages, GuardEvent("input", "pii", "allow", "no PII found")
    found = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    if rules.pii_action == "block":
        return messages, GuardEvent("input", "pii", "block", f"PII in the request ({found}); pii_action is block")
    redacted = [_map_text(m, lambda t: redact_pii(t, rules.pii_kinds)) for m in messages]
    return redacted, GuardEvent("input", "pii", "redact", f"redacted {found}")


def check_injection(messages: list[dict], rules: InputRules) -> tuple[list[dict], GuardEvent]:
    for index, text in _client_texts(messages):
        hit = find_injection(text)
        if hit:
            reason = f"{hit.family}: {hit.reason()} in message {index}"
            return messages, GuardEvent("input", "injection", "block", reason)
    return messages, GuardEvent("input", "injection", "allow", "no injection pattern matched")


def check_denied_topics(messages: list[dict], rules: InputRules) -> tuple[list[dict], GuardEvent]:
    for index, text in _client_texts(messages):
        for pattern in rules.denied_topics:
            match = pattern.search(text)
            if match:
                words = match.group()[:60]
                reason = f"{pattern.key} /{pattern.source}/ matched {words!r} in message {index}"
                return messages, GuardEvent("input", "denied_topics", "block", reason)
    checked = f"{len(rules.denied_topics)} denied topic pattern(s)" if rules.denied_topics else "no denied topics set"
    return messages, GuardEvent("input", "denied_topics", "allow", f"{checked}; none matched")


def check_max_input_tokens(messages: list[dict], rules: InputRules) -> tuple[list[dict], GuardEvent]:
    n = rules.count_tokens(messages)
    limit = rules.max_input_tokens
    if n > limit:
        reason = f"{n} {rules.token_unit} > max_input_tokens {limit}"
        return messages, GuardEvent("input", "max_input_tokens", "block", reason)
    return messages, GuardEvent("input", "max_input_tokens", "allow", f"{n} {rules.token_unit} <= {limit}")


INPUT_CHECKS: dict[str, Callable[[list[dict], InputRules], tuple[list[dict], GuardEvent]]] = {
    "pii": check_pii,
    "injection": check_injection,
    "denied_topics": check_denied_topics,
    "max_input_tokens": check_max_input_tokens,
}


def token_counter(tokenizer: Any | None) -> tuple[TokenCounter, str]:
    """Count what the model reads: the chat template rendered with the generation prompt, in tokens.

    Without a tokenizer (a guard built before any model loads, or in tests) words and punctuation marks are
    counted instead; BPE tokenizers give roughly 1.3 tokens per such unit, so the limit is then generous.
    """
    if tokenizer is None:
        return (lambda messages: sum(len(_WORDISH.findall(t)) for m in messages for t in message_texts(m))), "words"

    def count(messages: list[dict]) -> int:
        flat = [{"role": m.get("role", "user"), "content": "\n".join(message_texts(m))} for m in messages]
        try:
            text = tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
        except Exception:  # jinja2 errors and the template's own raise_exception (e.g. a role order it rejects)
            text = "\n".join(m["content"] for m in flat)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count, "tokens"
