"""Package data: ``default_catalog.jsonl``, the generated 3,000-item default catalog
(regenerate with ``python -m explorank.export.catalog_gen``)."""
