"""tunekit.monitor"""
