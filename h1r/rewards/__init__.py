"""Verifiable rewards: math (math-verify), multiple choice, sandboxed code; see registry.py."""
