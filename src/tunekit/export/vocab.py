"""The run's tokenizer as GGUF metadata: vocabulary, merges, token kinds, special tokens and chat template.

GGUF has no tokenizer.json; llama.cpp rebuilds the tokenizer from these keys. Byte-level BPE (the GPT-2
family: SmolLM, Llama 3, Qwen2) is what tunekit writes; SentencePiece vocabularies are refused by name.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from tunekit.errors import UserError

log = logging.getLogger(__name__)

# llama.cpp picks its pre-tokenizer (how text is split before BPE) from `tokenizer.ggml.pre`. Its converter
# names it by hashing the ids of this fixed text; the text and the hashes below are llama.cpp's
# (convert_hf_to_gguf.py, get_vocab_base_pre), for the families tunekit's users fine-tune most.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
# gguf.TokenType values (kept as ints so this module needs no gguf import).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]  # bos, eos, unk, pad, eot
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    warnings: list[str] = field(default_factory=list)


def read_vocab(tokenizer: Any, vocab_size: int) -> Vocab:
    """The tokenizer as llama.cpp's `gpt2` tokenizer model, padded to the model's `vocab_size` rows."""
    backend = _byte_level_bpe(tokenizer)
    tokens, types = _tokens(tokenizer, vocab_size)
    pre, warnings = _pre_tokenizer(tokenizer)
    add_bos, add_eos = _adds_special(tokenizer)
    return Vocab(tokens, types, _merges(backend), pre, _special_ids(tokenizer), add_bos, add_eos,
                 tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None, warnings)


def add_vocab(writer: Any, vocab: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for kind, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(False)  # byte-level BPE encodes spaces itself; the flag is for SentencePiece
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _byte_level_bpe(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("decoder")):
        kind = model.get("type") or type(tokenizer).__name__
        raise UserError(f"GGUF export writes byte-level BPE tokenizers (SmolLM, Llama 3, Qwen2); this one is {kind}",
                        fix="convert this model with llama.cpp's convert_hf_to_gguf.py instead")
    return model


def _tokens(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} embedding rows",
                        fix="resize the model's embeddings to the tokenizer before exporting")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # embedding rows no token uses (vocabularies padded to a multiple of 64)
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
        else:
            tokens.append(by_id[index])
            types.append(_kind(added.get(index)))
    return tokens, types


def _kind(added: Any) -> int:
    if added is None:
        return NORMAL
    return CONTROL if added.special else USER_DEFINED


def _merges(model: dict[str, Any]) -> list[str]:
    # tokenizers writes merges as "a b" (older) or ["a", "b"] (newer); GGUF stores "a b".
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]


def _pre_tokenizer(tokenizer: Any) -> tuple[str, list[str]]:
    digest = hashlib.sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    if digest in KNOWN_PRE_TOKENIZERS:
        return KNOWN_PRE_TOKENIZERS[digest], []
    return "default", ["the tokenizer's pre-tokenizer is not one tunekit recognises (SmolLM, Llama 3, Qwen2, GPT-2): "
                       "llama.cpp will split text with its default rule, so its tokens may differ on digits, "
                       "punctuation or unusual whitespace"]


def _adds_special(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS, read off an encoding rather than a flag some tokenizers lack."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos
    return add_bos, add_eos


def _special_ids(tokenizer: Any) -> dict[str, int]:
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "pad": tokenizer.pad_token_id}
    vocab = tokenizer.get_vocab()
    # llama.cpp stops at end-of-generation tokens; the end of a chat turn is one even when eos is another token.
    ids["eot"] = next((vocab[t] for t in END_OF_TURN if t in vocab), None)
    return {kind: int(token_id) for kind, token_id in ids.items() if token_id is not None}
