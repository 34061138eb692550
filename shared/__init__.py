"""Flexible Database: the package shared by the API and the worker."""
