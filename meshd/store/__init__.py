"""Durable storage of rules, their history, tokens and the audit log."""
