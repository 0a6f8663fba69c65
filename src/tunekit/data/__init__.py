"""tunekit.data: load, check, clean, dedupe, split and tokenize training data."""
