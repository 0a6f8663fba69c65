"""Examples to training tensors: the tokenizer's own chat template, loss only on the answers.

Which tokens are trained is decided on characters, not guessed from token ids: the template is
rendered up to each assistant turn (with the generation prompt) and up to its end, and the
characters in between, the answer plus its end-of-turn token, are the trained span. Offsets from
the fast tokenizer then map characters to tokens. This works for any template that renders
conversations as prefixes of each other, and is checked, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tunekit.data.records import Example
from tunekit.errors import UserError

IGNORE_INDEX = -100
Truncation = Literal["drop", "truncate_left", "truncate_right", "keep"]

# Used only when a tokenizer has no chat template: ChatML, the most widely understood format.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    spans: list[tuple[int, int]]  # trained character spans in `text`
    text: str
    offsets: list[tuple[int, int]]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    def to_features(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": [1] * len(self.input_ids)}


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a template-less tokenizer the ChatML fallback; True when the fallback was needed."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The token that ends an assistant turn in this template (what a model must learn to emit to stop)."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\x00"}]
    rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    tail = rendered.split("\x00", 1)[-1].strip()
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    return tokenizer.convert_ids_to_tokens(ids[0]) if ids else tokenizer.eos_token


def pad_token_warning(tokenizer: Any) -> str | None:
    """Warn when padding shares the end-of-turn token: collators that mask pads by id drop the stop signal."""
    end = end_of_turn_token(tokenizer)
    if tokenizer.pad_token is None:
        return "the tokenizer has no pad token; tunekit pads by attention mask, other tools may pick the end token"
    if end is not None and tokenizer.pad_token == end:
        return (
            f"pad token equals the end-of-turn token {end!r}: a collator that masks padding by token id "
            "will also mask the end token out of the loss, and the model will never learn to stop"
        )
    return None


def render(example: Example, tokenizer: Any) -> str:
    if example.meta.get("raw_text"):
        return example.messages[0]["content"] + (tokenizer.eos_token or "")
    return tokenizer.apply_chat_template(example.messages, tokenize=False)


def trained_spans(example: Example, tokenizer: Any, text: str, loss_on: str) -> list[tuple[int, int]]:
    if loss_on == "all" or example.meta.get("raw_text"):
        return [(0, len(text))]
    spans = []
    for i, message in enumerate(example.messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(example.messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(example.messages[: i + 1], tokenize=False)
        if not (text.startswith(upto) and upto.startswith(prompt)):
            raise UserError(
                "the chat template does not render conversations as prefixes of each other, so the answer "
                "tokens cannot be located",
                where=example.where,
                fix="use a template without turn-dependent rewriting, or data.loss_on=all",
            )
        # Train on the answer and its end-of-turn token, not the newline the template adds after it.
        spans.append((len(prompt), len(upto.rstrip())))
    return spans


def encode(
    example: Example, tokenizer: Any, *, max_seq_len: int, loss_on: str = "assistant",
    truncation: Truncation = "drop",
) -> Encoded | None:
    """Token ids and labels (-100 outside trained spans); None when the truncation policy drops it."""
    text = render(example, tokenizer)
    spans = trained_spans(example, tokenizer, text, loss_on)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    labels = [tok if _inside(off, spans) else IGNORE_INDEX for tok, off in zip(ids, offsets)]
    if len(ids) > max_seq_len:
        if truncation == "drop":
            return None
        cut = slice(0, max_seq_len) if truncation == "truncate_right" else slice(len(ids) - max_seq_len, None)
        if truncation != "keep":
            ids, labels, offsets = ids[cut], labels[cut], offsets[cut]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return Encoded(ids, labels, spans, text, offsets)


def _inside(offset: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    start, end = offset
    if end <= start:  # zero-width tokens (some special tokens) follow their position
        end = start + 1
    return any(s <= start < e for s, e in spans)


def token_lengths(examples: list[Example], tokenizer: Any, batch: int = 1024) -> list[int]:
    """Templated length of each example, in tokens; batched through the fast (Rust) tokenizer."""
    lengths: list[int] = []
    for i in range(0, len(examples), batch):
        texts = [render(e, tokenizer) for e in examples[i : i + batch]]
        lengths.extend(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return lengths
