"""sdbox: firmware and connection agent for secure-data-access thin clients."""

__version__ = "0.1.0"
