"""Choosing the next token of every row, and turning a row's tokens into text that is safe to show.

Each request draws from its own seeded `torch.Generator`, so a seeded request gives the same answer
whichever other requests share its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tunekit.generate.types import TokenLogprob, TopLogprob

REPLACEMENT_CHAR = "\ufffd"  # what a decoder prints for the first bytes of a character split across tokens


def request_rng(seed: int | None, device: torch.device) -> torch.Generator:
    rng = torch.Generator(device=device)
    if seed is None:
        rng.seed()  # fresh entropy: unseeded requests must not all draw the same numbers
    else:
        rng.manual_seed(seed)
    return rng


RowSampling = tuple[float, float, "torch.Generator | None"]  # temperature, top_p, the request's generator


def choose_tokens(logits: torch.Tensor, settings: Sequence[RowSampling]) -> torch.Tensor:
    """One token per row of `logits` ([rows, vocab]); `settings` holds (temperature, top_p, rng) per row.

    Greedy rows (temperature 0) take the arg-max, as HF generate does with do_sample=False (in fp32, as
    HF does too; the conversion is exact, and torch's CPU arg-max over bf16 took 5x longer than both).
    """
    logits = logits.float()
    tokens = logits.argmax(dim=-1)
    for row, (temperature, top_p, rng) in enumerate(settings):
        if temperature > 0:
            tokens[row] = sample_token(logits[row], temperature, top_p, rng)
    return tokens


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator | None) -> torch.Tensor:
    """Temperature, then nucleus (top-p) filtering as HF's TopPLogitsWarper does it: drop the least likely
    tokens whose cumulative probability stays within 1 - top_p, always keeping the most likely one."""
    scores = logits.float() / temperature
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - top_p)
        drop_sorted[-1] = False
        scores = scores.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=rng)[0]


def token_logprobs(logits: torch.Tensor, token: int, top: int, decode: Callable[[list[int]], str]) -> TokenLogprob:
    """`token`'s log-probability under softmax(`logits`) (one row), with the `top` most likely tokens'."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logprobs, top) if top else None
    rivals = () if best is None else tuple(  # tokens a constraint excludes (-inf) are no rivals
        TopLogprob(decode([i]), i, lp) for lp, i in zip(best.values.tolist(), best.indices.tolist())
        if lp != float("-inf"))
    return TokenLogprob(decode([token]), token, float(logprobs[token]), rivals)


class TextTracker:
    """A row's generated text, checked for stop strings after every token.

    `safe_text` never ends inside a UTF-8 character or inside what may become a stop string, so a
    stream can show it right away and never has to take anything back.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str]):
        self._decode = decode
        self.stop = tuple(s for s in stop if s)
        self.token_ids: list[int] = []
        self.text = ""
        self.stopped = False

    def add(self, token_id: int) -> bool:
        """Append a token; True when the text now contains a stop string (the text is cut before it)."""
        self.token_ids.append(token_id)
        if not self.stop:
            return False
        # Whole-text decode: detokenizers merge bytes and spaces across tokens, so decoding only the new
        # token would be wrong; answers are short enough for this to cost microseconds.
        self.text = self._decode(self.token_ids)
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.stopped = True
        return self.stopped

    def final_text(self) -> str:
        if not self.stopped:
            self.text = self._decode(self.token_ids)
        return self.text

    def safe_text(self) -> str:
        """The longest prefix of the text that will still be there, unchanged, when the row finishes."""
        if not self.stop:
            self.text = self._decode(self.token_ids)
        text = self.text.rstrip(REPLACEMENT_CHAR)
        return text[: len(text) - self._held_back(text)]

    def _held_back(self, text: str) -> int:
        """Length of the longest end of `text` that is the start of a stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
