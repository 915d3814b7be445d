"""explorank.export."""
