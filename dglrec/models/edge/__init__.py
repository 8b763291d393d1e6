"""Edge regression on the HetRec user–artist graph: the GCN family and trivial baselines."""
