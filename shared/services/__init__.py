"""Services: orchestration used by both the API and the worker."""
