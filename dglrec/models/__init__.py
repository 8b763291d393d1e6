"""Built-in models; importing this package registers them."""

from dglrec.models import (  # noqa: F401
    bprmf,
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
)
