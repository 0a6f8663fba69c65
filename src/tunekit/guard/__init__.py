"""tunekit.guard"""
