"""lrtune.client: a typed Python client for the lrtune REST API, and the CLI commands on it."""
