"""Next-token loss computed only where there is a label.

A causal LM's output layer is a large share of its compute (for SmolLM2-135M, 28 M of 135 M
matmul parameters), and most positions in instruction data are prompt tokens whose logits are
thrown away by the loss mask. Running the decoder, then the output layer only on the supervised
positions, removes that work and the (batch x length x vocab) logits tensor; transformers'
`model(labels=...)` computes every position.

Even at supervised positions the logits are large (positions x vocabulary: 300 answer tokens of a
49k vocabulary are 59 MB in fp32, and cross-entropy keeps three or four such tensors alive), so the
output layer and the loss run LOSS_CHUNK positions at a time, each piece under activation
checkpointing: only one piece's logits exist at once, and backward recomputes them (a few % of a
step's compute, since the output layer sees answer tokens only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunekit.data.tokenize import IGNORE_INDEX

# Supervised positions per piece of the output layer: 128 x 49k vocabulary is ~25 MB per fp32 tensor.
LOSS_CHUNK = 128


def decoder_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The decoder stack and output layer of a causal LM (through a PEFT wrapper), if it has them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(base, "base_model_prefix", "model")
    decoder = getattr(base, prefix, None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or base is decoder:
        return None
    # Some architectures scale or soft-cap logits in their forward; those take the standard path.
    if getattr(base.config, "final_logit_softcapping", None) or getattr(base.config, "logit_scale", None):
        return None
    return decoder, head


HeadLoss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def supervised_loss_sum(
    model: Any, batch: dict[str, torch.Tensor], *, direct: bool, head_loss: HeadLoss | None = None
) -> tuple[torch.Tensor, int]:
    """Sum of token losses and number of supervised tokens; the caller divides by the global count,
    so gradient accumulation and several processes weigh every token equally. `head_loss` computes one
    piece of the output layer's loss (head_loss_sum, or a compiled version of it)."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    picked, count = targets[supervised], int(supervised.sum())
    parts = decoder_and_head(model) if direct else None
    if parts is None:
        # Prefix and prompt tuning change the input inside the PEFT wrapper: use its forward.
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Prompt tuning prepends virtual tokens whose logits have no target: keep the real positions.
        logits = logits[:, -labels.shape[1] :][:, :-1][supervised]
        if count == 0:
            return logits.sum() * 0.0, 0
        return F.cross_entropy(logits.float(), picked, reduction="sum"), count
    decoder, head = parts
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    rows = hidden[:, :-1][supervised]
    if count == 0:  # still a graph through every weight, so backward (and DDP) behave as usual
        return head(rows).sum() * 0.0, 0
    return chunked_head_loss(head, rows, picked, head_loss), count


def chunked_head_loss(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, piece: HeadLoss | None = None
) -> torch.Tensor:
    """Summed cross-entropy of head(hidden) against targets, LOSS_CHUNK rows at a time (see the module doc)."""
    piece = piece or head_loss_sum
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, len(targets), LOSS_CHUNK):
        rows = slice(start, start + LOSS_CHUNK)
        if torch.is_grad_enabled():
            total = total + checkpoint(piece, head, hidden[rows], targets[rows], use_reentrant=False)
        else:
            total = total + piece(head, hidden[rows], targets[rows])
    return total


def head_loss_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")
