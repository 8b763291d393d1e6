"""dglrec: a DGL experiment framework for knowledge-graph-aware recommendation."""

import os

# DGL asks which backend to use on first import unless told; we only support PyTorch.
os.environ.setdefault("DGLBACKEND", "pytorch")

__version__ = "0.1.0"
