"""sdbox.broker."""
