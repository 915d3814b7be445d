"""explorank.benchmarks."""
