"""Runs: the composition root (recipe -> build -> fit, :mod:`~dglrec.runs.pipeline`),
MLflow tracking, run groups of seeds and sweep trials, Slurm and the servers."""
