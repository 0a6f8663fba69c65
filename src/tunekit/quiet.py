"""Offline and quiet: the settings every tunekit command starts with.

tunekit never downloads, so the Hugging Face libraries are told they are offline (a hub lookup fails
at once instead of timing out). Library chatter that a user cannot act on is silenced; everything
tunekit itself has to say still reaches the terminal.
"""

from __future__ import annotations

import logging
import os
import warnings


def offline_and_quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork processes; avoid its warning
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # bitsandbytes tries to fetch an optional CPU kernel from the hub and logs the failure at import.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # Compiled layers under gradient checkpointing with a context_fn (train/recompute.py keeps projection
    # outputs) make torch warn, every run, to check the region has no in-place ops; ours has none, and a user
    # cannot act on it. A filter, not a level: torch._logging resets its loggers' levels when dynamo starts.
    logging.getLogger("torch._higher_order_ops.wrap").addFilter(
        lambda record: "context_fn is passed to torch.utils.checkpoint" not in record.getMessage())
    for message in (
        r".*is_gradient_checkpointing.*",
        r".*gradient_checkpointing_enable.*",
        r".*`past_key_values` is deprecated.*",
        r".*torch\.jit\.script_method.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
