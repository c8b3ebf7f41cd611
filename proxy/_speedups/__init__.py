"""Compiled twins of hot-path modules (built from native/*.pyx); may be empty."""
