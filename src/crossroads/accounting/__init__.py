"""Pricing, usage, cost and generation records."""
