"""Prompt-injection heuristics: instructions to ignore the system prompt, role-play jailbreaks, requests
for the system prompt, and chat-template markers smuggled into user text.

Hand-written regexes rather than a classifier model: a guard runs on every request before the model,
must work offline with no extra download, and must say *why* it blocked (the family and the words that
matched), which a score from a model cannot. The cost is recall on novel phrasings; `bench/guard_eval.py`
measures precision and recall on a labelled set that includes hard negatives ("how do I ignore
whitespace in git diff", "enable developer mode on Android").

Each pattern pairs a verb with the object an attack needs ("ignore" + "previous instructions", "reveal"
+ "your system prompt"), because either word alone is common in ordinary support requests.
Text is normalised first (NFKC, zero-width characters removed, lower case, whitespace collapsed) so
full-width letters, soft hyphens or `ign\u200bore` do not slip past.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

INJECTION_FAMILIES = ("ignore_instructions", "roleplay_jailbreak", "system_prompt_request", "role_markers")

# Zero-width and formatting characters that render as nothing but split words for a regex.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\ufeff"))
_SPACES = re.compile(r"\s+")
_GAP = r"[^.!?\n]{0,40}?"  # a few words, never across a sentence end
_RULES = (
    r"(?:instructions?|prompts?|rules|directions?|guidelines|guardrails|constraints|restrictions|programming"
    r"|directives?|polic(?:y|ies))"
)
_LIMITS = (
    r"(?:rules|restrictions|limits|limitations|filters?|guidelines|censorship|ethics|morals|morality|policies"
    r"|policy|boundaries|constraints|safeguards|guardrails|content polic(?:y|ies))"
)
_HIDDEN_TEXT = (
    r"(?:system|initial|original|hidden|secret|internal|developer|starting|first|pre-?|confidential|base)"
    r"[ -]?(?:prompt|instructions?|message|rules|directives?|configuration|guidelines)"
)

_PATTERNS: dict[str, list[tuple[str, str]]] = {
    "ignore_instructions": [
        ("ignore-previous-instructions",
         rf"\b(?:ignore|disregard|forget|override|bypass|abandon|neglect|discard|drop)\b{_GAP}"
         rf"\b(?:previous|prior|above|earlier|preceding|former|original|initial|system|all|any|your"
         rf"|these|those|every)\b{_GAP}\b{_RULES}\b"),
        ("ignore-everything-above",
         r"\b(?:ignore|disregard|forget)\s+(?:all|everything)\s+(?:of\s+)?(?:the\s+)?"
         r"(?:above|before|previous|prior|you(?:'ve| have| were) (?:been )?told)\b"),
        ("do-not-follow-instructions",
         rf"\b(?:do not|don't|stop|no longer|quit)\s+"
         rf"(?:follow(?:ing)?|obey(?:ing)?|adher(?:e|ing) to|listen(?:ing)? to)"
         rf"\s+(?:your|the|any|those|these)\b{_GAP}\b{_RULES}\b"),
        ("new-instructions",
         r"\b(?:your|the)\s+(?:new|real|actual|updated|true)\s+(?:instructions|rules|task|directive)s?\s+(?:are|is)\b"
         r"|\b(?:new|updated|real|actual)\s+(?:system\s+)?instructions\s*:"),
        ("override-keyword", r"\b(?:system|admin|developer|root|sudo)\s+(?:override|mode override)\b"),
    ],
    "roleplay_jailbreak": [
        ("do-anything-now", r"\bdo anything now\b|\byou are (?:now )?dan\b|\bact as dan\b"),
        ("jailbreak-mode",
         r"\b(?:dan|jailbreak|jailbroken|unrestricted|unfiltered|uncensored|evil|chaos) mode\b"
         r"|\b(?:you are|you're|you will|you'll|act|behave|respond|answer|stay|remain|simulate)\b[^.!?\n]{0,20}?"
         r"\bdeveloper mode\b"),
        ("persona-without-rules",
         rf"\b(?:pretend|imagine|act as|act like|role-?play|role play|play the role|you are now|you're now"
         rf"|from now on,? you|you will now|simulate|hypothetical(?:ly)?|in a fictional world)\b[^.!?\n]{{0,60}}?"
         rf"\b(?:no|without|free (?:of|from)|not bound by|ignores?|unrestricted|unfiltered|uncensored|jailbroken"
         rf"|evil|amoral|unethical|immoral|no longer (?:bound|restricted|limited) by)\b[^.!?\n]{{0,30}}?\b{_LIMITS}\b"),
        ("unrestricted-ai",
         r"\b(?:unrestricted|unfiltered|uncensored|jailbroken|amoral|unethical|evil)\s+"
         r"(?:ai|assistant|model|chatbot|bot|version of (?:yourself|you)|llm|gpt)\b"),
        ("no-longer-an-ai",
         r"\byou (?:are|have) (?:no longer|not|never been) (?:an? )?(?:ai|assistant|language model|chatbot|bound|"
         r"restricted|limited)\b"
         rf"|\byou (?:have|with) no\s+{_LIMITS}\b|\byou can say anything\b|\bwithout (?:any )?refusing\b"),
    ],
    "system_prompt_request": [
        ("reveal-system-prompt",
         rf"\b(?:reveal|show|print|display|output|repeat|recite|tell|give|share|leak|dump|write out|copy|paste"
         rf"|list|expose|spell out|what (?:is|are|was|were)|what's|read)\b{_GAP}"
         rf"\b(?:your|the|its|this|my assistant's|yours)\s+(?:exact\s+|full\s+|complete\s+|entire\s+)?"
         rf"{_HIDDEN_TEXT}\b"),
        ("repeat-text-above",
         r"\b(?:repeat|print|output|recite|copy|echo|write|show|display|tell me)\s+(?:back\s+)?(?:me\s+)?"
         r"(?:everything|all|all of|the (?:text|words|content|messages?|lines?|instructions)"
         r"|the first \w+ (?:lines|words))\s+(?:the\s+)?"
         r"(?:above|before|prior|preceding|so far|verbatim|that came before|at the (?:start|top|beginning))"),
        ("what-were-you-told",
         r"\bwhat (?:were|are|have) you (?:been )?(?:told|instructed|programmed|configured)\b"
         r"|\bwhat (?:instructions|rules|guidelines) "
         r"(?:were you given|did you (?:get|receive)|do you (?:have|follow))\b"
         r"|\byour (?:instructions|prompt|rules) (?:verbatim|word for word)\b"),
    ],
    "role_markers": [
        ("chat-template-token",
         r"<\|(?:im_start|im_end|system|endoftext|start_header_id|end_header_id|eot_id|user|assistant)\|>"
         r"|\[/?(?:inst|sys)\]|<</?sys>>"),
        ("fake-system-turn",
         r"(?:^|\n)\s*(?:#{1,4}\s*)?(?:system|developer|admin)(?: message| prompt)?\s*[:\]]\s*"
         r"(?:you|ignore|disregard|forget|from now on|new|the assistant|override|respond|answer)\b"),
    ],
}

_COMPILED: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    family: [(name, re.compile(rx)) for name, rx in patterns] for family, patterns in _PATTERNS.items()
}


@dataclass(frozen=True)
class InjectionHit:
    family: str  # one of INJECTION_FAMILIES
    pattern: str  # the pattern's name, e.g. "ignore-previous-instructions"
    excerpt: str  # the matched words (normalised), for the log

    def reason(self) -> str:
        excerpt = self.excerpt if len(self.excerpt) <= 80 else self.excerpt[:77] + "..."
        return f"{self.pattern} pattern: {excerpt!r}"


def normalize_text(text: str) -> str:
    """What the heuristics look at: NFKC (full-width letters, ligatures), invisible characters removed,
    curly apostrophes straightened, lower case, runs of spaces and tabs collapsed (newlines kept)."""
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE)
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.splitlines())


def find_injection(text: str) -> InjectionHit | None:
    """The first injection pattern that matches `text`, family by family, or None."""
    normal = normalize_text(text)
    for family in INJECTION_FAMILIES:
        for name, pattern in _COMPILED[family]:
            match = pattern.search(normal)
            if match:
                return InjectionHit(family, name, match.group().strip())
    return None
