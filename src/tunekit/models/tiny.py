"""A tiny random Llama with a real fast tokenizer, built in about a second with no network.

Tests and smoke runs need a model that behaves like SmolLM2 end to end (ChatML, special tokens,
safetensors folder) without its 20 s conversion or its 500 MB of weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Same order as SmolLM2, so the ids match too: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2.
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# Verbatim from SmolLM2-135M-Instruct (the embedded GGUF): ChatML that adds a default system prompt
# when the conversation has none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

# Fixed training text: plain English, chat turns and JSON, so common words and JSON punctuation get merges.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. A small model can still learn a simple task when the "
    "examples are clear, the labels are consistent and the evaluation is honest.",
    "You are a helpful assistant. Answer the question using only the context. If the answer is not in "
    "the context, say that you do not know. Keep answers short and cite the source document.",
    "Question: What is the capital of France? Answer: Paris is the capital of France. "
    "Question: How many days are in a week? Answer: There are 7 days in a week.",
    '{"name": "Ada Lovelace", "born": 1815, "fields": ["mathematics", "computing"], "active": true}',
    '{"label": "positive", "score": 0.93, "text": "I loved this product and would buy it again!"}',
    '[{"id": 1, "status": "ok"}, {"id": 2, "status": "error", "message": null}]',
    "Fine-tuning adapts a pretrained language model to new data. Training runs for a few epochs; the "
    "loss should go down on the training set and the validation set. Then we compare against prompting.",
    "Customer: My order #12345 has not arrived yet. Agent: I am sorry to hear that. Let me check the "
    "status of your order and get back to you within 24 hours.",
    "Summarize the following text in one sentence. The meeting covered the budget, the hiring plan and "
    "the new office. Everyone agreed to review the numbers again next week.",
    "Numbers and symbols: 0 1 2 3 4 5 6 7 8 9 + - * / = % $ # @ & ( ) < > ? ! ; : ' \" ` ~ ^ _ | \\",
]


def train_tokenizer(vocab_size: int = 512) -> Any:
    """Byte-level BPE (any text encodes, nothing is ever unknown) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=IM_START,
        eos_token=IM_END,  # ends an assistant turn, so generation stops there
        unk_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,  # deliberately not eos: see tunekit.models.load.ensure_pad_token
        model_max_length=1024,
    )
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    return tokenizer


def tiny_config(tokenizer: Any, hidden_size: int = 64, num_layers: int = 2) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention like SmolLM2, so GQA code paths get exercised
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(
    out_dir: Path, *, vocab_size: int = 512, hidden_size: int = 64, num_layers: int = 2, seed: int = 0
) -> Path:
    """Write a tiny random LlamaForCausalLM + tokenizer to `out_dir` as a normal HF folder (safetensors)."""
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(vocab_size)
    config = tiny_config(tokenizer, hidden_size, num_layers)
    # fork_rng: seed the init for reproducibility without resetting the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
