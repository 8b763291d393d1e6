"""Models, one per file, grouped by family; importing this package registers them.

* :mod:`dglrec.models.kg`: knowledge-graph recommenders (KGCN, KAISG, MGWA,
  KGNN-LS, RippleNet, MKR, MMSS_MKR) and the KG embedding TransE;
* :mod:`dglrec.models.cf`: collaborative-filtering baselines (Pop, BPR-MF, LightGCN);
* :mod:`dglrec.models.edge`: edge regression on the HetRec graph (the GCN family
  and its trivial baselines).

Every module of the three families is imported here, so a new model is one new
file: its ``@register_model(name, ...)`` declares what it needs and how it is
trained (:mod:`dglrec.models.registry`).
"""

import importlib
import pkgutil

from dglrec.models import cf, edge, kg

for _family in (kg, cf, edge):
    for _module in pkgutil.iter_modules(_family.__path__, _family.__name__ + "."):
        importlib.import_module(_module.name)
