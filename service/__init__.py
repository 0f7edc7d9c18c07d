"""lrtune service: the FastAPI app, the store, settings and the CLI."""
