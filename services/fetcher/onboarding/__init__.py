"""Inbox onboarding: presets, autodiscovery, connection test, the admin API and CLI, key rotation."""
