"""sdbox.identity."""
