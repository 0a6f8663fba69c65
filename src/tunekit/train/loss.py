"""Next-token loss computed only where there is a label.

A causal LM's output layer is a large share of its compute (for SmolLM2-135M, 28 M of 135 M
matmul parameters), and most positions in instruction data are prompt tokens whose logits are
thrown away by the loss mask. Running the decoder, then the output layer only on the supervised
positions, removes that work and the (batch x length x vocab) logits tensor; transformers'
`model(labels=...)` computes every position.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunekit.data.tokenize import IGNORE_INDEX


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


def supervised_loss_sum(
    model: Any, batch: dict[str, torch.Tensor], *, direct: bool
) -> tuple[torch.Tensor, int]:
    """Sum of token losses and number of supervised tokens; the caller divides by the global count,
    so gradient accumulation and several processes weigh every token equally."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    count = int((targets != IGNORE_INDEX).sum())
    parts = decoder_and_head(model) if direct else None
    if parts is None:
        # Prefix and prompt tuning change the input inside the PEFT wrapper: use its forward.
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Prompt tuning prepends virtual tokens whose logits have no target: keep the real positions.
        logits = logits[:, -labels.shape[1] :][:, :-1][targets != IGNORE_INDEX]
    else:
        decoder, head = parts
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = head(hidden[:, :-1][targets != IGNORE_INDEX])
    picked = targets[targets != IGNORE_INDEX]
    if count == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(logits.float(), picked, reduction="sum"), count
