"""Evaluation harness: benchmark loaders, sandboxed code execution, metrics and reports."""
