"""explorank.plugins."""
