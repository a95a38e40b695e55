"""Shared internals: input validation, statistics, randomness."""
