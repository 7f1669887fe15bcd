"""Evaluation helpers: reading reference labels (nDPI) and scoring our results against them."""
