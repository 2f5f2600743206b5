"""Exact rewrites of networks: proved phases applied, dead parts deleted, dispatchers."""
