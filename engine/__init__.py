"""explorank.engine."""
