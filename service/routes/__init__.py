"""HTTP routes, one module per domain; each route only validates, calls the store and answers."""
