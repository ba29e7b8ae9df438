"""The box's clients of the centre's protocols (docs/broker-protocol.md): one place, box side."""
