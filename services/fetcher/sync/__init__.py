"""Sync engine of the fetcher: folder cursors, initial/incremental sync, IDLE, per-inbox supervision."""
