"""Crossroads: a self-hosted, OpenRouter-compatible LLM gateway."""

__version__ = "0.1.0"
