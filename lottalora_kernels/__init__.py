"""Triton kernels of lottalora: the seeded backbone generator and the fused seeded matmul.

Submodules import Triton; this package itself imports nothing heavy, so ``lottalora`` can read
``stream_spec`` on machines without Triton. Nothing here touches a GPU at import time.
"""
