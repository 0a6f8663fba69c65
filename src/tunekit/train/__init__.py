"""tunekit.train"""
