"""Analysis of finished runs: compare groups of runs, recommend with a logged model."""
