"""Render examples as the model sees them, trained tokens highlighted: a look prevents mask mistakes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rich.panel import Panel
from rich.text import Text

from tunekit.config import ProjectConfig
from tunekit.data.records import Example
from tunekit.data.tokenize import encode, end_of_turn_token, pad_token_warning

TRAINED = "bold black on green"
CONTEXT = "dim"


def render_preview(examples: list[Example], tokenizer: Any, cfg: ProjectConfig) -> Iterator[Any]:
    yield Text.assemble(
        "legend: ", ("trained tokens", TRAINED), " · ", ("context (masked, label -100)", CONTEXT),
        f" · end-of-turn token {end_of_turn_token(tokenizer)!r} · pad token {tokenizer.pad_token!r}",
    )
    if warning := pad_token_warning(tokenizer):
        yield Text(f"warning: {warning}", style="yellow")
    for example in examples:
        encoded = encode(
            example, tokenizer, max_seq_len=cfg.model.max_seq_len, loss_on=cfg.data.loss_on,
            truncation="keep",
        )
        if encoded is None:
            yield Text(f"{example.where}: nothing to train on", style="yellow")
            continue
        text = Text()
        for token_id, label in zip(encoded.input_ids, encoded.labels):
            piece = tokenizer.decode([token_id])
            text.append(piece, style=TRAINED if label != -100 else CONTEXT)
        title = (
            f"{example.where} · {len(encoded.input_ids)} tokens, {encoded.trained_tokens} trained"
            + (" · longer than max_seq_len" if len(encoded.input_ids) > cfg.model.max_seq_len else "")
        )
        yield Panel(text, title=title, title_align="left")
