"""Triton kernels (importing this package does not import triton)."""
