"""Upstream provider adapters: one package per upstream API (`providers/<type>/`), listed in `registry.py`."""
