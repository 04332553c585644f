"""Compiled C selective scan for CPU tensors (being written)."""
