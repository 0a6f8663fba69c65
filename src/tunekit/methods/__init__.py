"""tunekit.methods"""
