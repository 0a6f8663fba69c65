"""tunekit.eval"""
