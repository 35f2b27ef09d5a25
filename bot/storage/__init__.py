"""Keyword-only data functions for accounts, statistics and the audit log (console API and CLI)."""
