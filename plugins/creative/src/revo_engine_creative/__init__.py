"""Creative."""
