"""Kernel work without a GPU: a fake CUDA driver for Triton (``fake_cuda``: compile for sm_90 and
record launches) and SASS counting of compiled kernels (``sass``). Used by the benchmarks and the
tests; never by the library's own code paths."""
