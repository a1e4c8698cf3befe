"""Masked-LM pre-training: corpus readers (``corpus``) and the block-packing DataModule."""
