"""In-process fake servers for tests (protocol behaviour nothing local provides)."""
