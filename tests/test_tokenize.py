"""Loss masks: only answers (and their end-of-turn token) are trained, checked on real tokenizers."""

import pytest

from tunekit.data.records import Example
from tunekit.data.tokenize import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    encode,
    end_of_turn_token,
    ensure_chat_template,
    pad_token_warning,
)
from tunekit.models.load import load_tokenizer
from tunekit.models.resolve import resolve_model

MULTI_TURN = [
    {"role": "system", "content": "You triage tickets."},
    {"role": "user", "content": "My card was charged twice."},
    {"role": "assistant", "content": '{"category": "billing", "priority": "high"}'},
    {"role": "user", "content": "And the app crashes on login."},
    {"role": "assistant", "content": '{"category": "bug", "priority": "medium"}'},
]


def trained_segments(encoded, tokenizer) -> list[str]:
    """Decode each run of consecutive trained tokens separately."""
    segments, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            segments.append(tokenizer.decode(current))
            current = []
    if current:
        segments.append(tokenizer.decode(current))
    return segments


def check_mask(tokenizer):
    encoded = encode(Example(MULTI_TURN), tokenizer, max_seq_len=512)
    end = end_of_turn_token(tokenizer)
    assert trained_segments(encoded, tokenizer) == [
        MULTI_TURN[2]["content"] + end,
        MULTI_TURN[4]["content"] + end,
    ]
    assert encoded.labels == [t if label != IGNORE_INDEX else IGNORE_INDEX
                              for t, label in zip(encoded.input_ids, encoded.labels)]


def test_mask_on_tiny_tokenizer(tiny_model_dir):
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    check_mask(tokenizer)


@pytest.mark.slow
def test_mask_on_real_smollm2_tokenizer(smollm2_dir):
    tokenizer = load_tokenizer(resolve_model(str(smollm2_dir)))
    assert end_of_turn_token(tokenizer) == "<|im_end|>"
    check_mask(tokenizer)
    single = Example([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    encoded = encode(single, tokenizer, max_seq_len=512)
    trained = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "4<|im_end|>"
    assert pad_token_warning(tokenizer) is None  # tunekit replaced SmolLM2's pad == eos


def test_loss_on_all_and_raw_text(tiny_model_dir):
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    encoded = encode(Example(MULTI_TURN), tokenizer, max_seq_len=512, loss_on="all")
    assert IGNORE_INDEX not in encoded.labels
    raw = Example([{"role": "assistant", "content": "plain text"}], meta={"raw_text": True})
    encoded = encode(raw, tokenizer, max_seq_len=512)
    assert tokenizer.decode(encoded.input_ids) == "plain text" + tokenizer.eos_token


def test_truncation_policies(tiny_model_dir):
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    example = Example(MULTI_TURN)
    full = encode(example, tokenizer, max_seq_len=4096)
    limit = len(full.input_ids) - 5
    assert encode(example, tokenizer, max_seq_len=limit, truncation="drop") is None
    left = encode(example, tokenizer, max_seq_len=limit, truncation="truncate_left")
    right = encode(example, tokenizer, max_seq_len=limit, truncation="truncate_right")
    assert left.input_ids == full.input_ids[5:] and right.input_ids == full.input_ids[:limit]
    assert len(encode(example, tokenizer, max_seq_len=limit, truncation="keep").input_ids) == len(full.input_ids)


def test_pad_equal_to_end_token_is_warned(tiny_model_dir):
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    tokenizer.pad_token = tokenizer.eos_token
    assert "never learn to stop" in pad_token_warning(tokenizer)


def test_fallback_template_when_tokenizer_has_none(tiny_model_dir):
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    tokenizer.chat_template = None
    assert ensure_chat_template(tokenizer) is True
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    check_mask(tokenizer)
