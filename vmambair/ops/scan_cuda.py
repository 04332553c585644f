"""CUDA selective-scan backends (being written)."""
