"""Training: one epoch loop (:mod:`~dglrec.training.loop`), and the CTR, edge-regression
and KGE trainers that supply its training step and evaluation."""
