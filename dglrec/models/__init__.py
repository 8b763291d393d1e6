"""Built-in models; importing this package registers them."""

from dglrec.models import bprmf, kaisg, kgcn, lightgcn, mgwa, pop, transe  # noqa: F401
