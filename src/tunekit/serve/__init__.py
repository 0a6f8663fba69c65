"""tunekit.serve"""
