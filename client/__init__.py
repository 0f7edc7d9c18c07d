"""lrtune.client: a typed Python client for the lrtune REST API (httpx), and the CLI commands on it."""
