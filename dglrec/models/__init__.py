"""Built-in models; importing this package registers them."""

from dglrec.models import (  # noqa: F401
    biased_mf,
    bprmf,
    gcn_edge,
    global_mean,
    kaisg,
    kgcn,
    kgnn_ls,
    lightgcn,
    mgwa,
    mkr,
    mmss_mkr,
    pop,
    ripplenet,
    transe,
    user_mean,
)
