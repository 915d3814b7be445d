"""explorank.benchmarks.evaluation: exploration policy evaluation — simulator, replay, off-policy estimators, worlds and reports."""
