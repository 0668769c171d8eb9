"""Client-facing wire formats. Chat Completions is the canonical internal shape."""
