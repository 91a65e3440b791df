"""Live push: events reach watching streams right after their commit."""
