"""sdbox.agent."""
