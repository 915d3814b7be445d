"""explorank.export.training: two-tower fine-tuning of the encoder and its scoring heads."""
