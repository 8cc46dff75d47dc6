"""Data: the embedded synthetic math curriculum, its single programmatic teacher, and the tiny tokenizer."""
