"""Rendering results for people (terminal tables) and programs (JSON, CSV)."""
