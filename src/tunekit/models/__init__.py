"""tunekit.models"""
