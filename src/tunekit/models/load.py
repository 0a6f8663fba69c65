"""Load a resolved model and its tokenizer: safetensors only, no remote code unless asked, no network."""

from __future__ import annotations

from typing import Any

import torch

from tunekit.errors import UserError
from tunekit.models.resolve import ResolvedModel

# Tried in order when a tokenizer has no usable pad token. All are "never trained on as output" tokens.
PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>", "[PAD]")


def load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolved.path, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the tokenizer: {exc}", where=str(resolved.path)) from exc
    ensure_pad_token(tokenizer)
    return tokenizer


def load_chat_tokenizer(resolved: ResolvedModel, trust_remote_code: bool = False, say: Any = None) -> Any:
    """The tokenizer every stage uses: a distinct pad token, and a chat template (ChatML if it has none)."""
    from tunekit.data.tokenize import ensure_chat_template

    tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    if ensure_chat_template(tokenizer) and say is not None:
        say(f"note: {resolved.name} has no chat template; using ChatML")
    return tokenizer


def ensure_pad_token(tokenizer: Any) -> None:
    """Give the tokenizer a pad token that differs from eos whenever the vocabulary allows.

    Why: collators mask pad positions out of the loss by token id. If pad == eos (SmolLM2 ships
    exactly that), every real end-of-turn token is masked too, the model never learns to stop,
    and fine-tuned models ramble until max_new_tokens.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return
    vocab = tokenizer.get_vocab()
    for candidate in (*PAD_CANDIDATES, tokenizer.unk_token):
        if candidate is not None and candidate != eos and candidate in vocab:
            tokenizer.pad_token = candidate
            return
    if tokenizer.pad_token is None and eos is not None:
        # Last resort: padding must work; loss masking must then rely on the attention mask, not ids.
        tokenizer.pad_token = eos


def load_model(
    resolved: ResolvedModel,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> Any:
    """`kwargs` go to from_pretrained (e.g. a method's quantization_config or device_map)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            resolved.path,
            dtype=dtype,
            use_safetensors=True,  # never unpickle: .bin/.pt files can run arbitrary code on load
            trust_remote_code=trust_remote_code,
            local_files_only=True,
            **kwargs,
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the model: {exc}", where=str(resolved.path)) from exc
