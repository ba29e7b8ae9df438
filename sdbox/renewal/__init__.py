"""sdbox.renewal."""
