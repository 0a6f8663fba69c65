"""tunekit.report"""
