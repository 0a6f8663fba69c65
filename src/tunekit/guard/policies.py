"""Guardrails declared in the config (`guard:`), applied in the order listed, every decision logged.

Input policies run in `guard.input` order; a redaction changes what later policies see, and the first
block ends the check (later policies do not run, the request is refused). Output policies run in
`guard.output` order; the first failure replaces the answer with `guard.fallback`, except a JSON schema
failure, which first asks the caller to regenerate (up to `guard.json_retries` times) with feedback that
names the schema error. A regenerated answer goes through every output policy again.

Denied topics and denied patterns are regular expressions run on RE2 (linear time in the text, so no
lookaround or backreferences), matched case-insensitively against
normalised text (see `tunekit.guard.injection.normalize_text`), so full-width letters and zero-width
characters do not get around them.

`validate_guard_config` compiles everything (regexes, the schema file) and reports every problem at once,
naming the config key; the CLI calls it before any model loads.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import re2

from tunekit.config import ProjectConfig
from tunekit.config_stages import GuardConfig
from tunekit.errors import ConfigError
from tunekit.guard.events import GuardEvent, InputDecision, OutputDecision
from tunekit.guard.input import INPUT_CHECKS, InputRules, NamedPattern, token_counter
from tunekit.guard.output import OUTPUT_CHECKS, OutputRules, retry_feedback, schema_validator

WHOLE_CONVERSATION = frozenset({"max_input_tokens"})  # policies that judge what the model reads, not who wrote it


@dataclass(frozen=True)
class CompiledGuard:
    denied_topics: tuple[NamedPattern, ...]
    denied_patterns: tuple[NamedPattern, ...]
    schema: dict | None
    validator: Any | None


def _linear_time(source: str) -> re2._Regexp:
    """The pattern on RE2, case-insensitive: the operator's patterns are trusted, the text they run on is not,
    and Python's backtracking `re` takes exponential time on some pairs (`^(a+)+$` against "aaa...b")."""
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # the error is reported as a config problem instead of on stderr
    return re2.compile(source, options)


def _compile_patterns(key: str, sources: list[str], problems: list[tuple[str, str]]) -> tuple[NamedPattern, ...]:
    compiled = []
    for i, source in enumerate(sources):
        where = f"{key}[{i}]"
        try:
            re.compile(source)  # Python's messages say best what is wrong with a pattern
        except re.error as exc:
            problems.append((where, f"invalid regular expression {source!r}: {exc}"))
            continue
        try:
            compiled.append(NamedPattern(where, source, _linear_time(source)))
        except re2.error:
            problems.append((where, f"pattern {source!r} uses lookaround or a backreference, which cannot run in "
                                    "time linear in the request text (RE2); rewrite it without them"))
            continue
        if compiled[-1].regex.search(""):
            problems.append((where, f"pattern {source!r} matches empty text, so it would match every request"))
    return tuple(compiled)


def _load_schema(guard: GuardConfig, base_dir: Path, problems: list[tuple[str, str]]) -> tuple[dict | None, Any]:
    if guard.json_schema is None:
        if "json_schema" in guard.output:
            problems.append(("guard.output", "lists json_schema but guard.json_schema names no schema file"))
        return None, None
    path = (base_dir / guard.json_schema).resolve()
    if not path.is_file():
        problems.append(("guard.json_schema", f"schema file {str(path)!r} does not exist"))
        return None, None
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(("guard.json_schema", f"{path} is not valid JSON: {exc}"))
        return None, None
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, (dict, bool)):
        problems.append(("guard.json_schema", f"{path} holds a {type(schema).__name__}, not a JSON schema object"))
        return None, None
    try:
        return schema, schema_validator(schema)
    except SchemaError as exc:
        problems.append(("guard.json_schema", f"{path} is not a valid JSON schema: {exc.message}"))
        return None, None


def _check_lists(guard: GuardConfig, problems: list[tuple[str, str]]) -> None:
    from tunekit.data.pii import PII_KINDS

    for key, names in (("guard.input", guard.input), ("guard.output", guard.output)):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            problems.append((key, f"lists {', '.join(repeated)} more than once"))
    if guard.pii_kinds is not None and (bad := sorted(set(guard.pii_kinds) - set(PII_KINDS))):
        problems.append(("guard.pii_kinds", f"unknown PII kind(s) {bad}; allowed: {', '.join(PII_KINDS)}"))


def compile_guard_config(guard: GuardConfig, base_dir: Path) -> CompiledGuard:
    """Compile the regexes and load the schema; one ConfigError listing every problem, each by its key."""
    problems: list[tuple[str, str]] = []
    _check_lists(guard, problems)
    topics = _compile_patterns("guard.denied_topics", guard.denied_topics, problems)
    patterns = _compile_patterns("guard.denied_patterns", guard.denied_patterns, problems)
    schema, validator = _load_schema(guard, base_dir, problems)
    if len(problems) == 1:
        where, message = problems[0]
        raise ConfigError(message, where=where)
    if problems:
        listed = "\n".join(f"  {where}: {message}" for where, message in problems)
        raise ConfigError(f"{len(problems)} guard config problems:\n{listed}", where=problems[0][0])
    return CompiledGuard(topics, patterns, schema, validator)


def validate_guard_config(cfg: ProjectConfig) -> None:
    """Raise ConfigError (naming the key, e.g. guard.denied_topics[2]) if the guard cannot be built."""
    compile_guard_config(cfg.guard, cfg.base_dir)


@dataclass(frozen=True)
class Guardrails:
    enabled: bool  # guard.enabled: whether the server applies these; eval's safety run uses them regardless
    input_policies: tuple[str, ...]
    output_policies: tuple[str, ...]
    input_rules: InputRules
    output_rules: OutputRules
    json_retries: int
    fallback: str

    @classmethod
    def from_config(cls, cfg: ProjectConfig, *, tokenizer: Any = None) -> Guardrails:
        """Build from `cfg.guard`; the schema path is relative to the config file's folder.

        `tokenizer` counts input tokens for max_input_tokens; without one, words are counted.
        """
        guard = cfg.guard
        compiled = compile_guard_config(guard, cfg.base_dir)
        count, unit = token_counter(tokenizer)
        kinds = tuple(guard.pii_kinds) if guard.pii_kinds is not None else None
        input_rules = InputRules(guard.pii_action, kinds, compiled.denied_topics, guard.max_input_tokens, count, unit)
        output_rules = OutputRules(compiled.validator, compiled.denied_patterns, guard.max_output_chars)
        return cls(guard.enabled, tuple(guard.input), tuple(guard.output), input_rules, output_rules,
                   guard.json_retries, guard.fallback)

    def with_denied_topics(self, sources: Iterable[str], key: str = "extra_denied_topics") -> Guardrails:
        """A copy that also refuses these topics (added at the end of the input policies if not listed)."""
        problems: list[tuple[str, str]] = []
        extra = _compile_patterns(key, list(sources), problems)
        if problems:
            raise ConfigError(problems[0][1], where=problems[0][0])
        rules = dataclasses.replace(self.input_rules, denied_topics=self.input_rules.denied_topics + extra)
        policies = self.input_policies if "denied_topics" in self.input_policies else (
            *self.input_policies, "denied_topics")
        return dataclasses.replace(self, input_rules=rules, input_policies=policies)

    def check_input(self, messages: list[dict], *, trusted: int = 0) -> InputDecision:
        """Run the input policies in order on every message but the first `trusted` ones, which the operator
        wrote (a deployment's system prompt); over the API nothing is trusted, whatever its role. The token
        limit still counts the whole conversation: the model reads all of it."""
        operator, client = messages[:trusted], messages[trusted:]
        events: list[GuardEvent] = []
        for policy in self.input_policies:
            if policy in WHOLE_CONVERSATION:
                _, event = INPUT_CHECKS[policy]([*operator, *client], self.input_rules)
            else:
                client, event = INPUT_CHECKS[policy](client, self.input_rules)
            events.append(event)
            if event.action == "block":
                return InputDecision(False, [*operator, *client], events)
        return InputDecision(True, [*operator, *client], events)

    def check_output(
        self,
        text: str,
        *,
        regenerate: Callable[[str], str] | None = None,
        citation_check: Callable[[str], bool] | None = None,
    ) -> OutputDecision:
        """Run the output policies in order. `regenerate(feedback)` returns a new answer and is called at most
        `json_retries` times, only when the JSON schema fails; `citation_check(text)` is passed when the
        request is grounded and says whether the answer cites a retrieved source."""
        events: list[GuardEvent] = []
        retries = 0
        while True:
            text, failed = self._run_output_policies(text, citation_check, events)
            if failed is None:
                return OutputDecision(True, text, events, retries)
            if failed.policy == "json_schema" and regenerate is not None and retries < self.json_retries:
                feedback = retry_feedback(failed.reason)
                retries += 1
                failed.action = "retry"
                failed.reason += f"; retry {retries} of {self.json_retries}"
                text = regenerate(feedback)
                continue
            failed.action = "fallback"
            failed.reason += "; served the configured fallback"
            return OutputDecision(False, self.fallback, events, retries)

    def _run_output_policies(
        self, text: str, citation_check: Callable[[str], bool] | None, events: list[GuardEvent]
    ) -> tuple[str, GuardEvent | None]:
        """Append one event per policy until one fails; return the text to serve and the failing event."""
        for policy in self.output_policies:
            verdict = OUTPUT_CHECKS[policy](text, self.output_rules, citation_check)
            event = GuardEvent("output", policy, "allow" if verdict.ok else "fallback", verdict.reason)
            events.append(event)
            if not verdict.ok:
                return text, event
            text = verdict.text
        return text, None
