"""Aggregation of a study's raw results into summary tables, figures and a markdown report."""
