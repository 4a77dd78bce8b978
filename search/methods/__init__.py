"""Supernet training methods: each trains a supernet of a search space and hands rated candidates to a strategy.

``dna`` (block-wise distillation), ``dna_plus`` (progressive teachers) and ``dna_pp`` (self-supervised, VICReg)
share ``dna.train_supernet`` / ``dna.rate_blocks``; the engine (``search.engine``) gives them torchrun/DDP, AMP,
checkpoints and logs.
"""
