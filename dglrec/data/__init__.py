"""The datasets a recipe names, built by :mod:`data_prep` and cached.

* :class:`KGRecDataset`: the user/entity heterograph of a KG-aware CTR dataset
  (Last.FM-KG) with its labelled train/eval/test pairs;
* :class:`EdgeRegressionDataset`: the HetRec user–artist graph with liking scores;
* :func:`load_dataset`: recipe -> protocol -> the processed dataset.
"""

from data_prep.edge_dataset import EdgeRegressionDataset
from data_prep.kg_dataset import KGRecDataset
from dglrec.data.loading import ctr_protocol_of, edge_protocol_of, load_dataset, prepare_dataset

__all__ = [
    "EdgeRegressionDataset",
    "KGRecDataset",
    "ctr_protocol_of",
    "edge_protocol_of",
    "load_dataset",
    "prepare_dataset",
]
