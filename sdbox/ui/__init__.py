"""sdbox.ui."""
