"""Blocks and samples the models consume: user-conditioned KG blocks, ripple sets, negatives."""
