"""Count-only probes: kernels compiled for a GPU target and counted, never launched or shipped."""
