"""Authentication, key policy, credit and rate limits."""
