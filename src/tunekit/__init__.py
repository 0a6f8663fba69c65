"""tunekit: fine-tune, evaluate, ground, guard and serve open LLMs."""

__version__ = "0.1.0"
