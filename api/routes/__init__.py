"""Blueprints, all under /api/v1."""
