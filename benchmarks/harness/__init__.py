"""What the benchmark scripts share: results written with their environment (``results``), the
LLaMA-shaped models they compare (``llama``), and the distributed benchmarks' ranks (``ranks``)."""
