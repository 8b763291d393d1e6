"""Built-in models; importing this package registers them."""

from dglrec.models import kgcn  # noqa: F401
