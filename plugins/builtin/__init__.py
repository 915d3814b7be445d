"""explorank.plugins.builtin."""
