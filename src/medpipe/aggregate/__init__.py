"""Aggregation of result tables into the study's tables and figures (every number keeps its keys)."""
