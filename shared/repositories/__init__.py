"""Job records, locks and worker heartbeats in Redis."""
