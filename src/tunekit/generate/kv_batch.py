"""The running decode batch: rows left-padded to one length, sharing one preallocated KV cache.

Rows can leave the batch (`keep`) as soon as they finish and new, prefilled rows can join it (`merge`),
so a long answer never holds up the others and a free slot is refilled at once. Prompts admitted together
that begin with the same tokens (a system prompt, few-shot examples) run that prefix once (`SharedPrefix`):
each row's cache is then [prefix | left padding | own tokens], the padding masked like any other.

Why not transformers' DynamicCache: it concatenates every layer's whole cache on each step (about 20%
of a 32-row decode step here) and cannot take in rows of another length. Attention always runs over
the cache's whole capacity, the unfilled slots masked: a few dozen wasted slots cost less than the
copy a bf16 matmul makes of a sliced (non-contiguous) cache, which was 6x slower than on a whole one.
Why our own attention function: for one query token per row, grouped-query attention is two small
matmuls against the shared K/V heads; eager attention first copies K/V once per query head, and
torch's CPU flash-attention kernel took half of a 32-row decode step (measured; docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

ATTENTION_NAME = "tunekit_gqa"
# Slots added to the cache at a time: growing copies the cache, so do it rarely.
GROW_SLOTS = 32


def grouped_query_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for the engine's 4-D additive masks; returns [batch, query, heads, head_dim] like HF's own."""
    batch, heads, q_len, head_dim = query.shape
    if q_len > 1:  # prefill: a memory-efficient kernel, K/V heads shared without copies
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                             enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask  # [batch, 1, 1, keys] broadcasts over heads
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [batch, kv_heads, group, head_dim]
    return out.reshape(batch, 1, heads, head_dim), None


ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, grouped_query_attention)


def cache_argument(model: Any, cache: Cache) -> dict[str, Cache]:
    """The cache as the model's forward takes it: recent transformers 5 releases call the argument `cache`;
    earlier ones call it `past_key_values` and silently drop a `cache` into **kwargs, building a cache of their
    own whose keys then miss the slots the mask covers (found on a GPU machine with transformers 5.17)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel forwards kwargs
    return {_cache_keyword(type(base)): cache}


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


class SlotCache(Cache):
    """Per layer, keys and values of shape [rows, kv_heads, capacity, head_dim]; slots [0, length) are filled.

    The model writes through `update` at `length` and attends over all slots (the mask hides the
    unfilled ones); the batch advances `length` after each forward, so every layer writes the same slots."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], length: int):
        super().__init__(layers=[DynamicLayer() for _ in keys])
        self.keys, self.values, self.length = keys, values, length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[2]
        self.keys[layer_idx][:, :, self.length : end] = key_states
        self.values[layer_idx][:, :, self.length : end] = value_states
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.length

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]


@dataclass
class SharedPrefix:
    """Keys and values of the tokens every prompt of a prefill begins with, computed once for all of them."""

    length: int
    keys: list[torch.Tensor]  # per layer, [1, kv_heads, length, head_dim]
    values: list[torch.Tensor]

    @classmethod
    def compute(cls, model: Any, shape: ModelShape, ids: list[int], **forward: Any) -> SharedPrefix:
        device, length = shape.device, len(ids)
        cache = SlotCache(*shape.empty_cache(1, length), length=0)
        allowed = torch.ones((length, length), dtype=torch.bool, device=device).tril()[None, None]
        model(input_ids=torch.tensor([ids], dtype=torch.long, device=device),
              attention_mask=additive_mask(allowed, shape.dtype),
              position_ids=torch.arange(length, device=device)[None], use_cache=True,
              logits_to_keep=torch.tensor([length - 1], device=device), **cache_argument(model, cache), **forward)
        return cls(length, cache.keys, cache.values)


@dataclass
class ModelShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, config: Any, dtype: torch.dtype, device: torch.device) -> ModelShape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(config.num_hidden_layers, kv_heads, head_dim, dtype, device)

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * torch.tensor([], dtype=self.dtype).element_size()

    def empty_cache(self, rows: int, capacity: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # zeros, not empty: padded slots are multiplied by a zero probability, and 0 * NaN would be NaN
        shape = (rows, self.kv_heads, capacity, self.head_dim)
        new = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(2 * self.layers)]
        return new[: self.layers], new[self.layers :]


class DecodeBatch:
    """Rows of requests decoded together. `rows` is whatever the caller tracks per row, kept in step
    with the tensors; `next_tokens` are the tokens each row feeds in at the next step."""

    def __init__(self, shape: ModelShape, cache: SlotCache, valid: torch.Tensor, positions: torch.Tensor,
                 rows: list[Any]):
        self.shape, self.cache, self.valid, self.positions, self.rows = shape, cache, valid, positions, rows
        self.next_tokens = torch.zeros(len(rows), dtype=torch.long, device=shape.device)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def length(self) -> int:
        return self.cache.length

    @classmethod
    def prefill(cls, model: Any, shape: ModelShape, prompts: Sequence[list[int]], rows: list[Any], pad_id: int,
                reserve: int, prefix: SharedPrefix | None = None, **forward: Any) -> tuple[DecodeBatch, torch.Tensor]:
        """Run the prompts (left-padded to the longest) through the model; returns the batch and the
        last position's logits, [rows, vocab]. `prefix`: the tokens every prompt begins with, already run;
        only what follows it goes through the model here. `forward`: extra model arguments (per-row
        adapter names)."""
        shared = prefix.length if prefix is not None else 0
        tails = [p[shared:] for p in prompts]
        length = max(len(t) for t in tails)
        total, device = shared + length, shape.device
        ids = torch.full((len(prompts), length), pad_id, dtype=torch.long, device=device)
        valid = torch.zeros((len(prompts), total + reserve), dtype=torch.bool, device=device)
        valid[:, :shared] = True
        for i, tail in enumerate(tails):
            ids[i, length - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            valid[i, total - len(tail) : total] = True
        # Pad positions get position 0 (or the prefix's last), as in HF generate; they are masked out anyway.
        positions = (valid[:, :total].long().cumsum(dim=1) - 1).clamp(min=0)[:, shared:]
        cache = SlotCache(*shape.empty_cache(len(prompts), total + reserve), length=shared)
        if prefix is not None:
            for layer in range(shape.layers):
                cache.keys[layer][:, :, :shared] = prefix.keys[layer]
                cache.values[layer][:, :, :shared] = prefix.values[layer]
        causal = torch.ones((length, total + reserve), dtype=torch.bool, device=device).tril(diagonal=shared)
        allowed = causal[None, None] & valid[:, None, None, :]
        # The last position as an index tensor, not logits_to_keep=1: indexing copies the hidden states into
        # a contiguous [rows, 1, hidden] block, while the slice that =1 makes is strided, and a linear layer
        # on a strided 3-D input goes through bmm with the vocab-sized weight copied once per row (~1 s
        # per prefill chunk in bf16 here).
        last = torch.tensor([length - 1], device=device)
        out = model(input_ids=ids, attention_mask=additive_mask(allowed, shape.dtype), position_ids=positions,
                    use_cache=True, logits_to_keep=last, **cache_argument(model, cache), **forward)
        cache.length = total
        batch = cls(shape, cache, valid, positions[:, -1] + 1, rows)
        return batch, out.logits[:, -1, :]

    def step(self, model: Any, **forward: Any) -> torch.Tensor:
        """Feed every row's next token; returns the logits for the token after it, [rows, vocab]."""
        if self.length >= self.cache.capacity:
            self._grow(GROW_SLOTS)
        self.valid[:, self.length] = True
        mask = additive_mask(self.valid[:, None, None, :], self.shape.dtype)
        out = model(input_ids=self.next_tokens[:, None], attention_mask=mask, position_ids=self.positions[:, None],
                    use_cache=True, **cache_argument(model, self.cache), **forward)
        self.cache.length += 1
        self.positions += 1
        return out.logits[:, -1, :]

    def keep(self, indices: list[int]) -> None:
        """Drop every row not in `indices`, and the left padding no remaining row needs."""
        index = torch.tensor(indices, dtype=torch.long, device=self.shape.device)
        valid = self.valid.index_select(0, index)
        first = int(valid[:, : self.length].any(dim=0).long().argmax()) if len(indices) else 0
        self.cache.keys = [k.index_select(0, index)[:, :, first:].contiguous() for k in self.cache.keys]
        self.cache.values = [v.index_select(0, index)[:, :, first:].contiguous() for v in self.cache.values]
        self.cache.length -= first
        self.valid = valid[:, first:].contiguous()
        self.positions = self.positions.index_select(0, index)
        self.next_tokens = self.next_tokens.index_select(0, index)
        self.rows = [self.rows[i] for i in indices]

    @classmethod
    def merge(cls, batches: Sequence[DecodeBatch], reserve: int) -> DecodeBatch:
        """One batch holding all rows, each right-aligned at the longest batch's length."""
        if len(batches) == 1:
            return batches[0]
        shape = batches[0].shape
        length = max(b.length for b in batches)
        total = sum(len(b) for b in batches)
        keys, values = shape.empty_cache(total, length + reserve)
        valid = torch.zeros((total, length + reserve), dtype=torch.bool, device=shape.device)
        row = 0
        for b in batches:
            rows, offset = slice(row, row + len(b)), length - b.length
            for layer in range(shape.layers):
                keys[layer][rows, :, offset:length] = b.cache.keys[layer][:, :, : b.length]
                values[layer][rows, :, offset:length] = b.cache.values[layer][:, :, : b.length]
            valid[rows, offset:length] = b.valid[:, : b.length]
            row += len(b)
        merged = cls(shape, SlotCache(keys, values, length), valid, torch.cat([b.positions for b in batches]),
                     [r for b in batches for r in b.rows])
        merged.next_tokens = torch.cat([b.next_tokens for b in batches])
        return merged

    def _grow(self, slots: int) -> None:
        pad = (0, 0, 0, slots)  # F.pad counts from the last dimension: head_dim, then the slot axis
        self.cache.keys = [F.pad(k, pad) for k in self.cache.keys]
        self.cache.values = [F.pad(v, pad) for v in self.cache.values]
        self.valid = F.pad(self.valid, (0, slots))


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attention is allowed, the dtype's lowest finite value elsewhere (finite, so a fully
    masked padding row gives a uniform softmax instead of NaN)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
