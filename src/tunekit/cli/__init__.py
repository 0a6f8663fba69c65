"""tunekit.cli"""
