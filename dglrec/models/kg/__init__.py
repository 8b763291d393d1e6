"""Knowledge-graph recommenders and KG embeddings."""
