"""Evaluation: CTR and regression metrics, full-ranking top-K, link prediction."""
