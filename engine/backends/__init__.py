"""explorank.engine.backends."""
