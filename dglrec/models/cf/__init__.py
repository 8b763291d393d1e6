"""Collaborative-filtering baselines: they see the user–item graph only, never the KG."""
