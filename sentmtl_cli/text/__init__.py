"""Text: input checks, words with character offsets, and the tokenizer wrapper (no torch)."""
