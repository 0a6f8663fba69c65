"""tunekit.data"""
