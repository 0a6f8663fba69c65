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

Everything here takes time linear in the text, which is request data: the patterns run on RE2 (google-re2),
whose automata cannot backtrack (Python's `re` took 6 s on the fake-system-turn pattern and 16,000
newlines, issue #18), and NFKC sees no run of more than 30 combining marks (see `_stream_safe`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import re2

INJECTION_FAMILIES = ("ignore_instructions", "roleplay_jailbreak", "system_prompt_request", "role_markers")

# Zero-width and formatting characters that render as nothing but split words for a regex.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\ufeff"))
_SPACES = re.compile(r"\s+")  # one class, repeated: `re` scans it in linear time
# CPython's NFKC sorts the combining marks after a letter with an insertion sort, quadratic in the run: 16,000
# marks in descending combining class take a third of a second, a megabyte minutes. The Stream-Safe Text
# Format (UAX #15, section 13) bounds runs with a CGJ (U+034F, invisible, a starter) after each 30 marks; only
# degenerate text has such runs, and a CGJ among marks splits no word (both are non-word characters).
# FF9E/FF9F, halfwidth sound marks, are letters that NFKC turns into combining marks.
_MARK_RUN = re2.compile(r"[\pM\x{FF9E}\x{FF9F}]{31,}")
_CGJ = "\u034f"
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


def _re2(pattern: str) -> re2._Regexp:
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1  # they run on `_ascii_view`: one byte is one character
    return re2.compile(pattern.encode("ascii"), options)


_COMPILED: dict[str, list[tuple[str, re2._Regexp]]] = {
    family: [(name, _re2(rx)) for name, rx in patterns] for family, patterns in _PATTERNS.items()
}
# RE2's \b and \w know only ASCII letters, digits and _, Python's every Unicode letter and digit. The patterns
# therefore see normalised text with each other word character made a `0` (no pattern names a digit) and each
# other non-ASCII character a control character (none names one either): one byte per character, so offsets
# carry over, and \b falls where it fell. (Normalised text holds no white space but space and newline, which
# RE2's \s and Python's both match.) Each substitution is one character class: linear.
_OTHER_WORD = re.compile(r"[^\W\x00-\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


@dataclass(frozen=True)
class InjectionHit:
    family: str  # one of INJECTION_FAMILIES
    pattern: str  # the pattern's name, e.g. "ignore-previous-instructions"
    excerpt: str  # the matched words (normalised), for the log

    def reason(self) -> str:
        excerpt = self.excerpt if len(self.excerpt) <= 80 else self.excerpt[:77] + "..."
        return f"{self.pattern} pattern: {excerpt!r}"


def _stream_safe(text: str) -> str:
    """`text` with a CGJ after every 30 characters of each run of combining marks (see `_MARK_RUN`)."""
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate (valid JSON) is no mark to RE2
    if _MARK_RUN.search(data) is None:
        return text
    pieces, done = [], 0
    for match in _MARK_RUN.finditer(data):
        run = match.group().decode("utf-8")
        pieces += [data[done : match.start()], _CGJ.join(run[i : i + 30] for i in range(0, len(run), 30)).encode()]
        done = match.end()
    pieces.append(data[done:])
    return b"".join(pieces).decode("utf-8", "surrogatepass")


def normalize_text(text: str) -> str:
    """What the heuristics look at: NFKC (full-width letters, ligatures), invisible characters removed,
    curly apostrophes straightened, lower case, runs of spaces and tabs collapsed (newlines kept)."""
    text = unicodedata.normalize("NFKC", _stream_safe(text)).translate(_INVISIBLE)
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.splitlines())


def _ascii_view(normal: str) -> bytes:
    if not normal.isascii():
        normal = _NON_ASCII.sub("\x01", _OTHER_WORD.sub("0", normal))
    return normal.encode("ascii")


def find_injection(text: str) -> InjectionHit | None:
    """The first injection pattern that matches `text`, family by family, or None."""
    normal = normalize_text(text)
    view = _ascii_view(normal)
    for family in INJECTION_FAMILIES:
        for name, pattern in _COMPILED[family]:
            match = pattern.search(view)
            if match:
                start, end = match.span()
                return InjectionHit(family, name, normal[start:end].strip())
    return None
