"""Core: settings, logging, errors and redaction. Imports nothing else of the project."""
