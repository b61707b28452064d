"""Shared pieces of the project, imported by main.py (local imports travel with the project)."""
