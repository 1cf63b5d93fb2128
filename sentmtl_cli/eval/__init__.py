"""Scoring: metrics, and `evaluate` over labelled data or STS pairs."""
