"""Evaluation: task quality of a model, and (bench) how well a draft serves its target."""

from .quality import evaluate_records, generate_texts

__all__ = ["evaluate_records", "generate_texts"]
