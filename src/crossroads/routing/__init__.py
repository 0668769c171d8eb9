"""Model resolution, provider preferences, fallbacks, retries and health."""
