"""Reusable test helpers: small trainables and the store conformance suite."""
