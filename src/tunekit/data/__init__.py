"""tunekit.data: load, check, clean, dedupe, split and tokenize training data."""

# Where `tunekit data prepare` writes inside a run folder; later stages read the splits from here.
DATA_DIR = "data"
