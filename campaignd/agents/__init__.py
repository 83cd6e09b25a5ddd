"""Agents: small classes that read a registry snapshot and return recommendations (no I/O)."""
