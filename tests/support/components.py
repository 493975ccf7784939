"""Fixtures that start real components on free loopback ports."""
