"""explorank.benchmarks.latency: encoder and end-to-end serving latency benchmarks."""
