"""Evaluation: the fine-tuned model against the baselines, with and without retrieved context."""
