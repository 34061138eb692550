"""Domain: pure models and contracts (no I/O). Imports nothing of the project but shared.core."""
