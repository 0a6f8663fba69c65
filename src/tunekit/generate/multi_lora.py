"""Rows of several LoRA adapters in one forward pass, with two small matmuls per layer.

Hand-written because PEFT's mixed-batch forward (`adapter_names=`) loops over the adapters in Python in every
LoRA layer, rebuilding each adapter's row-index list there at every step: with 4 adapters on SmolLM2 that
is ~200 layers x 4 adapters x (gather, two matmuls, scatter-add) per decoded token, which made a batch of
mixed rows about twice as slow as the same rows on one adapter. Here every layer's adapters are concatenated
once along the rank (A: `[in, adapters*rank]`, B: `[adapters*rank, out]`, ranks zero-padded to the largest,
scaling folded into B). A forward computes every adapter's low-rank projection for every row (`x @ A`, only
adapters*rank columns, a few percent of the base matmul), zeroes the columns of the adapters a row does not
use (a mask made once per block of steps), and adds `@ B` to the base output. That is the batched LoRA of
S-LoRA and Punica, done with dense matmuls instead of a per-row gather of weights (`A[rows]` copied every
adapter's matrices per row and layer per step: as slow as the matmuls themselves on CPU).

Only plain LoRA on `nn.Linear` layers takes this path; DoRA and other variants, and quantized (QLoRA)
layers, keep PEFT's own mixed-batch forward (`StackedLora.usable` is False for them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class StackedLora:
    def __init__(self, model: Any):
        self.model = model
        self.mixed_forwards = 0  # blocks that decoded rows of more than one adapter (for tests and stats)
        self._rows: torch.Tensor | None = None  # each row's adapter position while a mixed block runs
        self._masks: dict[tuple, torch.Tensor] = {}  # per block: which rank columns each row uses
        self.invalidate()

    def invalidate(self) -> None:
        """Look at the model's LoRA layers again and forget the stacks: an adapter was loaded or unloaded
        (`Generator.load_adapter`, `unload_adapter`), and a new one may wrap layers the others do not."""
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer

        self.layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        # Plain LoRA on nn.Linear only: DoRA and other variants, and quantized layers, keep PEFT's forward.
        self.usable = bool(self.layers) and all(
            type(m) is LoraLinear and isinstance(m.base_layer, torch.nn.Linear) and not m.lora_variant
            and not m.merged for m in self.layers)
        self._names: tuple[str, ...] = ()
        self._stacks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @contextmanager
    def rows(self, adapters: list[str]) -> Iterator[None]:
        """Forward passes in this block decode row i with `adapters[i]`.

        For the block's length PEFT's own LoRA update is off in every layer (each computes its base output
        only) and a forward hook adds the rows' updates; nothing stays on the model afterwards, which is
        then exactly as before."""
        self._restack()
        self._masks = {}
        self._rows = torch.tensor([self._names.index(a) for a in adapters], dtype=torch.long)
        self.mixed_forwards += 1
        disabled = [layer._disable_adapters for layer in self.layers]
        hooks = [layer.register_forward_hook(self._add_rows_update) for layer in self.layers]
        for layer in self.layers:
            layer._disable_adapters = True  # read by PEFT's forward; enable_adapters() would also set grads
        try:
            yield
        finally:
            for layer, was in zip(self.layers, disabled):
                layer._disable_adapters = was
            for hook in hooks:
                hook.remove()
            self._rows = None

    def _add_rows_update(self, layer: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
        a, b = self._stacks[id(layer)]
        low = args[0].to(a.dtype) @ a  # [rows, tokens, adapters*rank]: every adapter's projection
        return output + ((low * self._mask(a)) @ b).to(output.dtype)  # only each row's own adapter's

    def _mask(self, a: torch.Tensor) -> torch.Tensor:
        """[rows, 1, adapters*rank]: 1 where a column belongs to the row's adapter (one per rank, dtype, device)."""
        key = (a.shape[1], a.dtype, a.device)
        if key not in self._masks:
            rank = a.shape[1] // len(self._names)
            column_adapter = torch.arange(a.shape[1], device=a.device) // rank
            rows = self._rows.to(a.device)  # type: ignore[union-attr]
            self._masks[key] = (rows[:, None] == column_adapter[None, :]).to(a.dtype)[:, None, :]
        return self._masks[key]

    def _restack(self) -> None:
        names = tuple(self.model.peft_config)
        if names != self._names:
            self._stacks = {id(layer): _stack(layer, names) for layer in self.layers}
            self._names = names


def _stack(layer: Any, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's adapters side by side: A `[in, adapters*rank]` and B `[adapters*rank, out]`, contiguous in
    the orientation the forward multiplies with, ranks zero-padded to the layer's largest."""
    weight = layer.base_layer.weight
    rank = max((layer.lora_A[n].weight.shape[0] for n in names if n in layer.lora_A), default=1)
    a = weight.new_zeros(layer.in_features, len(names) * rank)
    b = weight.new_zeros(len(names) * rank, layer.out_features)
    for i, name in enumerate(names):
        if name not in layer.lora_A:  # an adapter that does not touch this layer adds nothing to it
            continue
        r, start = layer.lora_A[name].weight.shape[0], i * rank
        a[:, start : start + r] = layer.lora_A[name].weight.T
        b[start : start + r] = (layer.lora_B[name].weight * layer.scaling[name]).T
    return a, b
