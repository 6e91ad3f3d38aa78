"""W's chunking as on a GPU, reproduced on small CPU layers: the two-phase path's host work depends
on M only through its chunk count, so the host-side benchmarks (launch_count, host_time) give a
small layer as many chunks as an N = K = 4096 bf16 layer gets on a GPU."""

from __future__ import annotations

GPU_NK, GPU_ELEMENT_SIZE = 4096, 2


def chunk_bytes_as_on_gpu(k: int, gpu_m: int = 64) -> int:
    """CHUNK_BYTES for a small float32 layer that splits W into as many chunks as an N = K = 4096
    bf16 layer does on a GPU with ``gpu_m`` rows of input. Holds while the small layer's own
    input stays below that CHUNK_BYTES (M <= 128 at k = 256), as the rows counted there do."""
    from lottalora_kernels.seeded_linear import two_phase
    from lottalora_kernels.stream import spec

    rows = two_phase.chunk_rows(GPU_NK, GPU_NK, GPU_ELEMENT_SIZE, spec.V2_ROW_SPAN, gpu_m)
    gpu_chunks = -(-GPU_NK // rows)
    return -(-k // gpu_chunks) * k * 4  # float32 here
