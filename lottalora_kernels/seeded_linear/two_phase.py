"""Two-phase regime (large M: prefill, training): make each chunk of W once, then a GEMM.

    for each chunk of W:  buf = W_chunk (generate_backbone, signs for v2)   phase 1
                          acc_chunk = x @ buf^T   (or dy @ buf)  by cuBLAS    phase 2
    out_chunk = beta * value_scale * acc_chunk + LoRA + bias                   (seeded_epilogue)

A one-pass kernel regenerates W once per BLOCK_M rows of x; here every weight is generated once
per call, into a buffer of ``CHUNK_BYTES`` (small enough to stay in a Hopper's L2 while the GEMM
reads it), or at large M up to the size of the activation and ``MAX_CHUNK_BYTES``
(``chunk_rows``: fewer chunks, fewer launches), and the product runs at cuBLAS speed on all M
rows. The forward chunks W by rows (out_features:
each chunk is a column block of y), the input gradient by columns (in_features: a column block
of dx), so each GEMM reduces over its full K and needs no partial sums.

Numerics: the GEMM accumulates in float32 and hands its float32 result to the epilogue
(``torch.mm(..., out_dtype=torch.float32)`` on GPUs), so y, dx and dbeta are rounded once, as
in the fused kernels (a product rounded to bf16 first would round dbeta's terms twice). The
float32 round trip costs 2 x 4 bytes per output element (benchmarks/NOTES.md counts it against
the stored-weight baseline's unfused elementwise passes). Stream v2's
signs are exact in every dtype; stream v1's values are rounded to the input dtype, as the
one-pass kernel rounds its tiles.

With ``bind`` both directions also return a replay of the call (``TwoPhaseForwardReplay``,
``TwoPhaseInputGradReplay``): the chunks' bound generator and epilogue launches around the same
GEMMs, which the eager plans of ``lottalora.ops.eager`` run on a layer's repeated calls.
"""

from __future__ import annotations

import torch

from ..allocation import new_output
from ..backbone_gen import generate_backbone
from ..runtime import narrowed
from ..stream import spec
from .epilogue import dbeta_total, seeded_epilogue

CHUNK_BYTES = 16 * 2**20
MAX_CHUNK_BYTES = 64 * 2**20
MAX_PRODUCT_BYTES = 256 * 2**20


def chunk_rows(total: int, other: int, element_size: int, granule: int, m: int) -> int:
    """Rows (forward) or columns (input gradient) of W in one chunk, a multiple of ``granule``
    (at least one): as many as fit CHUNK_BYTES of W; more once the activation W multiplies
    (x or dy: m x other) outgrows that, up to the activation's bytes and MAX_CHUNK_BYTES of W,
    while the chunk's float32 product (m x rows x 4 bytes) stays within MAX_PRODUCT_BYTES.

    By then the GEMM is compute-bound and gains nothing from an L2-resident chunk, while each
    chunk costs the host a generator launch, a GEMM and an epilogue launch
    (``benchmarks.host_time`` measures what that costs). The transient memory of a chunk is its
    W buffer plus its float32 product: at most 64 + 256 MiB, and never more than the 16 MiB rule
    gave at the same M once the product cap binds (plus a float32 copy of x or dy per chunk
    where torch.mm has no out_dtype: off CUDA, torch < 2.8)."""
    row_bytes = max(1, other * element_size)
    fit = CHUNK_BYTES // row_bytes
    activation = m * row_bytes
    if activation > CHUNK_BYTES:
        grown = min(activation, MAX_CHUNK_BYTES) // row_bytes
        fit = max(fit, min(grown, MAX_PRODUCT_BYTES // max(1, 4 * m)))
    return min(total, max(granule, fit // granule * granule))


def _generate(buf, *, seed, stream, version, init, in_features, rows, cols, bind=False):
    return generate_backbone(seed, stream, in_features, init, rows, cols, buf.device, version=version,
                             dtype=buf.dtype, signs=version == 2, out=buf, bind=bind)


_MM_OUT_DTYPE: bool | None = None


def _matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b accumulated and returned in float32 (the inputs' products are exact in float32)."""
    global _MM_OUT_DTYPE
    if a.dtype == torch.float32:
        return torch.mm(a, b)
    if a.is_cuda:
        if _MM_OUT_DTYPE is None:  # torch.mm(out_dtype=) exists for CUDA since torch 2.8
            try:
                torch.mm(a[:1, :1], b[:1, :1], out_dtype=torch.float32)
                _MM_OUT_DTYPE = True
            except (TypeError, RuntimeError, NotImplementedError):
                _MM_OUT_DTYPE = False
        if _MM_OUT_DTYPE:
            return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def _value_scale(version: int, in_features: int) -> float:
    return spec.backbone_std(in_features) if version == 2 else 1.0


def two_phase_fwd(
    x: torch.Tensor, *, seed: int, stream: int, version: int, init: str, out_features: int,
    xa: torch.Tensor | None, lora_B: torch.Tensor | None, beta: torch.Tensor, bias: torch.Tensor | None,
    scale: float, bind: bool = False,
):
    """y (M, out_features) = beta * x @ W_seed^T + scale * xa @ lora_B^T + bias; x: (M, K). With
    ``bind``: (y, a ``TwoPhaseForwardReplay`` of the call, or None where a chunk was not one
    generator launch and one epilogue launch)."""
    M, K = x.shape
    N = out_features
    out = new_output((M, N), x.dtype, x.device)
    if M == 0:
        return (out, None) if bind else out
    rows = chunk_rows(N, K, x.element_size(), spec.V2_ROW_SPAN, M)
    buf = torch.empty((rows, K), dtype=x.dtype, device=x.device)
    chunks = []
    for n0 in range(0, N, rows):
        n1 = min(n0 + rows, N)
        w = narrowed(buf, 0, 0, n1 - n0)
        made = _generate(w, seed=seed, stream=stream, version=version, init=init, in_features=K, rows=(n0, n1),
                         cols=(0, K), bind=bind)
        done = seeded_epilogue(_matmul_fp32(x, w.t()), narrowed(out, 1, n0, n1), beta=beta,
                               value_scale=_value_scale(version, K), lo=xa, lmat=narrowed(lora_B, 0, n0, n1),
                               lora_scale=scale, bias=narrowed(bias, 0, n0, n1), bind=bind)
        if bind:
            chunks.append((n0, n1, made[1], done[1]))
    if not bind:
        return out
    if any(generator is None or epilogue is None for _, _, generator, epilogue in chunks):
        return out, None
    return out, TwoPhaseForwardReplay(tuple(chunks), (M, N), (rows, K))


class TwoPhaseForwardReplay:
    """``two_phase_fwd``'s chunks again: ``replay(x, xa, lora_B, beta, bias) -> y`` on tensors
    laid out as the bound call's (shapes, strides, dtypes, device, 16-byte alignment: the caller
    keys its calls on that). Each chunk's generator and epilogue launch the bound kernels; the
    GEMM between them is cuBLAS's, as in the call."""

    __slots__ = ("chunks", "out_shape", "buf_shape")

    def __init__(self, chunks: tuple, out_shape: tuple[int, int], buf_shape: tuple[int, int]):
        self.chunks, self.out_shape, self.buf_shape = chunks, out_shape, buf_shape

    def __call__(self, x, xa, lora_B, beta, bias):
        out = new_output(self.out_shape, x.dtype, x.device)
        buf = torch.empty(self.buf_shape, dtype=x.dtype, device=x.device)
        for n0, n1, generator, epilogue in self.chunks:
            w = narrowed(buf, 0, 0, n1 - n0)
            generator(w)
            epilogue(_matmul_fp32(x, w.t()).unsqueeze(0), narrowed(out, 1, n0, n1), xa, narrowed(lora_B, 0, n0, n1),
                     narrowed(bias, 0, n0, n1), beta, None, None)
        return out


def two_phase_bwd_dx(
    dy: torch.Tensor, *, seed: int, stream: int, version: int, init: str, in_features: int,
    dy_b: torch.Tensor | None, lora_A: torch.Tensor | None, beta: torch.Tensor, scale: float,
    x_for_dbeta: torch.Tensor | None = None, need_dx: bool = True, bind: bool = False,
):
    """dx = beta * dy @ W_seed + scale * dy_b @ lora_A and dbeta = <x, dy @ W_seed>.

    dy: (M, N); dy_b: (M, rank) or None; lora_A: (rank, in_features) or None. Returns (dx or
    None, dbeta as a float32 0-dim tensor or None); with ``bind`` also a
    ``TwoPhaseInputGradReplay`` of the call, or None (as ``two_phase_fwd``)."""
    M, N = dy.shape
    K = in_features
    dx = new_output((M, K), dy.dtype, dy.device) if need_dx else None
    if M == 0:
        dbeta = torch.zeros((), device=dy.device) if x_for_dbeta is not None else None
        return (dx, dbeta, None) if bind else (dx, dbeta)
    cols = chunk_rows(K, N, dy.element_size(), spec.V2_COL_SPAN, M)
    buf = torch.empty((N, cols), dtype=dy.dtype, device=dy.device)
    value_scale = _value_scale(version, K)
    partials, chunks = [], []
    for k0 in range(0, K, cols):
        k1 = min(k0 + cols, K)
        w = narrowed(buf, 1, 0, k1 - k0)
        made = _generate(w, seed=seed, stream=stream, version=version, init=init, in_features=K, rows=(0, N),
                         cols=(k0, k1), bind=bind)
        done = seeded_epilogue(
            _matmul_fp32(dy, w), narrowed(dx, 1, k0, k1), beta=beta, value_scale=value_scale, lo=dy_b,
            lmat=narrowed(lora_A, 1, k0, k1).t() if lora_A is not None else None, lora_scale=scale,
            x_for_dbeta=narrowed(x_for_dbeta, 1, k0, k1), bind=bind)
        partial = done[0] if bind else done
        if bind:
            chunks.append((k0, k1, made[1], done[1]))
        if partial is not None:
            partials.append(partial)
    dbeta = dbeta_total(partials, dy.device) if x_for_dbeta is not None else None
    if not bind:
        return dx, dbeta
    if any(generator is None or epilogue is None for _, _, generator, epilogue in chunks):
        return dx, dbeta, None
    return dx, dbeta, TwoPhaseInputGradReplay(tuple(chunks), dx.shape if dx is not None else None, (N, cols))


class TwoPhaseInputGradReplay:
    """``two_phase_bwd_dx``'s chunks again: ``replay(dy, dy_b, lora_A, beta, x_for_dbeta) -> (dx
    or None, dbeta or None)`` on tensors keyed as the bound call's (see
    ``TwoPhaseForwardReplay``)."""

    __slots__ = ("chunks", "dx_shape", "buf_shape")

    def __init__(self, chunks: tuple, dx_shape, buf_shape: tuple[int, int]):
        self.chunks, self.dx_shape, self.buf_shape = chunks, dx_shape, buf_shape

    def __call__(self, dy, dy_b, lora_A, beta, x_for_dbeta):
        dx = new_output(self.dx_shape, dy.dtype, dy.device) if self.dx_shape is not None else None
        buf = torch.empty(self.buf_shape, dtype=dy.dtype, device=dy.device)
        partials = []
        for k0, k1, generator, epilogue in self.chunks:
            w = narrowed(buf, 1, 0, k1 - k0)
            generator(w)
            partial = epilogue(_matmul_fp32(dy, w).unsqueeze(0), narrowed(dx, 1, k0, k1), dy_b,
                               narrowed(lora_A, 1, k0, k1).t() if lora_A is not None else None, None, beta,
                               narrowed(x_for_dbeta, 1, k0, k1), None)
            if partial is not None:
                partials.append(partial)
        return dx, (dbeta_total(partials, dy.device) if x_for_dbeta is not None else None)
