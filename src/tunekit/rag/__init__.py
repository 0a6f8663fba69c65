"""tunekit.rag"""
