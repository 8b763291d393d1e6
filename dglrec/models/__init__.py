"""Built-in models; importing this package registers them."""

from dglrec.models import bprmf, kaisg, kgcn, lightgcn, mgwa, transe  # noqa: F401
