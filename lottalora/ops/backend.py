"""The one place that decides which implementation runs, and calls it: the Triton kernels or the
torch backend.

``LOTTALORA_BACKEND`` is read at every call (never cached at import): ``triton`` forces the
kernels (on CPU tensors they need ``TRITON_INTERPRET=1`` set before Triton is imported),
``torch`` forces the torch backend; unset or ``auto`` picks Triton for CUDA tensors when Triton
is installed and the torch backend otherwise. This is the only module of ``lottalora`` that
imports the kernels' launchers (lazily: ``lottalora`` imports without Triton).

Three operations, each on a ``BackboneBlock`` (the whole layer, or a tensor-parallel rank's
block of it):
- ``forward``: y = beta * x @ W_block^T + scale * xa @ B^T + bias, and xa = lora_x @ A^T;
- ``input_grad``: dx = beta * dy @ W_block + scale * dy_b @ A, and dbeta = <x, dy @ W_block>;
- ``dense_block``: W_seed[rows, cols] as a tensor (``Linear.backbone_weight``, merging).
On the Triton backend a whole layer runs the seeded-matmul kernels (``lottalora_kernels.
seeded_linear``, which pick a regime per call); a block of a bigger layer runs the one-pass
kernels on its rows or columns where that regime is on (``dispatch.block_regime``), else the
torch backend's loops on chunks that the Triton generator makes.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from lottalora_kernels.environment import flag, setting

from ..backbone import BackboneBlock, BackboneSpec, backbone_block
from . import torch_backend

BACKENDS = ("auto", "triton", "torch")

# Looked up once: asked on every call on CUDA, and fixed for a process. find_spec does not
# import Triton. (A functools cache here makes torch.compile warn as it traces the wrapper.)
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def resolve_backend(device: torch.device) -> str:
    """'triton' or 'torch' for tensors on ``device``, honouring ``LOTTALORA_BACKEND``."""
    choice = setting("LOTTALORA_BACKEND", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"LOTTALORA_BACKEND must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        return "triton" if device.type == "cuda" and _TRITON_INSTALLED else "torch"
    if choice == "triton":
        if not _TRITON_INSTALLED:
            raise RuntimeError("LOTTALORA_BACKEND=triton but Triton is not installed")
        # Meta tensors run nothing (the custom ops' fakes give their shapes): no interpreter needed.
        if device.type not in ("cuda", "meta") and not flag("TRITON_INTERPRET"):
            raise RuntimeError(
                f"LOTTALORA_BACKEND=triton on a {device.type} tensor needs TRITON_INTERPRET=1, "
                "set before Triton is first imported"
            )
    return choice


def supported_dtypes(backend: str) -> tuple[torch.dtype, ...]:
    """The input dtypes ``backend`` computes in."""
    if backend == "torch":
        return (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    return (torch.float32, torch.float16, torch.bfloat16)


def hands_signs_to_backward(backend: str, version: int) -> bool:
    """Whether the forward hands packed signs to the backward: the torch backend on stream v2,
    where regenerating them costs more than holding them (on a GPU the kernels regenerate)."""
    return backend == "torch" and version == 2


def _kernels():
    from lottalora_kernels import seeded_linear

    return seeded_linear


def _adapter_product(x: torch.Tensor, lora_A: torch.Tensor | None, lora_x: torch.Tensor | None):
    return (lora_x if lora_x is not None else x) @ lora_A.T if lora_A is not None else None


def forward(
    backend: str, x: torch.Tensor, block: BackboneBlock, lora_A: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None, scale: float, keep_signs: bool = False,
    lora_x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(y (M, block out), xa = (lora_x or x) @ lora_A^T (M, rank) or None, packed signs or None).

    x and lora_x: (M, block in). The packed signs (uint8, ``torch_backend.packed_signs``) come
    back only when ``keep_signs`` and ``hands_signs_to_backward``."""
    spec = block.spec
    if backend == "torch":
        xa = _adapter_product(x, lora_A, lora_x)
        y, packed = torch_backend.seeded_linear_torch_fwd(
            x, block, xa, lora_B, beta, bias, scale, keep_signs=keep_signs and hands_signs_to_backward(backend,
                                                                                                       spec.version))
        return y, xa, packed
    bias = kernel_bias(bias)
    if block.is_whole:
        y, xa = _kernels().seeded_linear_fwd(x, seed=spec.seed, stream=spec.stream, version=spec.version,
                                             init=spec.init, out_features=spec.out_features, lora_A=lora_A,
                                             lora_B=lora_B, beta=beta, bias=bias, scale=scale, lora_x=lora_x)
        return y, xa, None
    kernels = _kernels()
    if kernels.block_regime(spec.version, x.dtype, x.is_cuda) is not None:
        y, xa = kernels.seeded_block_fwd(x, seed=spec.seed, stream=spec.stream, in_features=spec.in_features,
                                         rows=block.rows, cols=block.cols, lora_A=lora_A, lora_B=lora_B, beta=beta,
                                         bias=bias, scale=scale, lora_x=lora_x)
        return y, xa, None
    xa = _adapter_product(x, lora_A, lora_x)
    acc = torch_backend.blocked_product(x, _generated_blocks(block, x.dtype, x.device), block.out_features)
    return torch_backend.forward_epilogue(acc, spec, xa, lora_B, beta, bias, scale, x.dtype), xa, None


def input_grad(
    backend: str, dy: torch.Tensor, block: BackboneBlock, dy_b: torch.Tensor | None, lora_A: torch.Tensor | None,
    beta: torch.Tensor, scale: float, x_for_dbeta: torch.Tensor | None, need_dx: bool,
    packed: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx (M, block in) or None unless ``need_dx``, dbeta 0-dim or None without
    ``x_for_dbeta``): dx = beta * dy @ W_block + scale * dy_b @ lora_A, dbeta = <x, dy @ W_block>.
    dy: (M, block out); dy_b: (M, rank) or None; packed: the forward's packed signs or None."""
    spec = block.spec
    if backend == "torch":
        return torch_backend.seeded_linear_torch_bwd_dx(dy, block, dy_b, lora_A, beta, scale, x_for_dbeta, need_dx,
                                                        packed)
    if block.is_whole:
        return _kernels().seeded_linear_bwd_dx(dy, seed=spec.seed, stream=spec.stream, version=spec.version,
                                               init=spec.init, in_features=spec.in_features, dy_b=dy_b,
                                               lora_A=lora_A, beta=beta, scale=scale, x_for_dbeta=x_for_dbeta,
                                               need_dx=need_dx)
    kernels = _kernels()
    if kernels.block_regime(spec.version, dy.dtype, dy.is_cuda) is not None:
        return kernels.seeded_block_bwd_dx(dy, seed=spec.seed, stream=spec.stream, in_features=spec.in_features,
                                           rows=block.rows, cols=block.cols, dy_b=dy_b, lora_A=lora_A, beta=beta,
                                           scale=scale, x_for_dbeta=x_for_dbeta, need_dx=need_dx)
    blocks = _generated_blocks(block, dy.dtype, dy.device)
    return torch_backend.blocked_input_grad(dy, blocks, block.in_features, spec, dy_b, lora_A, beta, scale,
                                            x_for_dbeta, need_dx)


def bias_is_kernel_ready(bias: torch.Tensor | None) -> bool:
    """Whether the kernels may read ``bias`` as it is: they read it with unit stride (a strided
    view, e.g. ``t[::2]``, would give other elements)."""
    return bias is None or bias.is_contiguous()


def kernel_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """``bias`` as the kernels read it (``bias_is_kernel_ready``), copied where it is not."""
    return bias if bias_is_kernel_ready(bias) else bias.contiguous()


def launches_bind(block: BackboneBlock, x: torch.Tensor) -> bool:
    """Whether the Triton backend's launches for ``block`` on x (*, block in) may be bound
    (``forward_replayable``): a whole layer's unless in stream v1's one-pass regime
    (``layer_launches_bind``), a block's where ``block_regime`` runs the one-pass kernels on it
    (elsewhere its chunks go through the torch backend's loops). False means they never are. x
    is unchecked here: only its leading sizes, dtype and device are read."""
    version = block.spec.version
    if block.is_whole:
        return _kernels().layer_launches_bind(version, math.prod(x.shape[:-1]), x.dtype, x.is_cuda)
    return _kernels().block_regime(version, x.dtype, x.is_cuda) is not None


def replay_state() -> tuple:
    """What decides whether a replay of a call's kernel launches still applies
    (``lottalora.ops.eager``), read now: the dispatch's settings that choose the regime and the
    launch (a key's part: a plan made under other settings is not reused). Asked for Triton-backend
    calls only."""
    global _DISPATCH
    if _DISPATCH is None:
        from lottalora_kernels.seeded_linear import dispatch

        _DISPATCH = dispatch
    return _DISPATCH.replay_state()


_DISPATCH = None  # the kernels' dispatch module, imported at the first replay_state (it imports Triton)


def forward_replayable(
    backend: str, x: torch.Tensor, block: BackboneBlock, lora_A: torch.Tensor | None, lora_B: torch.Tensor | None,
    beta: torch.Tensor, bias: torch.Tensor | None, scale: float, lora_x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, object | None]:
    """``forward``'s (y, xa) without packed signs, and a replay of its launches, ``replay(x,
    lora_A, lora_B, beta, bias, lora_x) -> (y, xa)`` for calls keyed alike, where there is one
    (the Triton backend with a bias the kernels read as it is: on a whole layer where the
    dispatch binds the regime's launches, on a block of one in the one-pass regime); None
    elsewhere."""
    if backend == "triton" and bias_is_kernel_ready(bias):
        spec = block.spec
        if block.is_whole:
            return _kernels().seeded_linear_fwd_replayable(
                x, seed=spec.seed, stream=spec.stream, version=spec.version, init=spec.init,
                out_features=spec.out_features, lora_A=lora_A, lora_B=lora_B, beta=beta, bias=bias, scale=scale,
                lora_x=lora_x)
        kernels = _kernels()
        if kernels.block_regime(spec.version, x.dtype, x.is_cuda) is not None:
            return kernels.seeded_block_fwd(x, seed=spec.seed, stream=spec.stream, in_features=spec.in_features,
                                            rows=block.rows, cols=block.cols, lora_A=lora_A, lora_B=lora_B,
                                            beta=beta, bias=bias, scale=scale, lora_x=lora_x, bind=True)
    y, xa, _ = forward(backend, x, block, lora_A, lora_B, beta, bias, scale, False, lora_x)
    return y, xa, None


def input_grad_replayable(
    backend: str, dy: torch.Tensor, block: BackboneBlock, dy_b: torch.Tensor | None, lora_A: torch.Tensor | None,
    beta: torch.Tensor, scale: float, x_for_dbeta: torch.Tensor | None, need_dx: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, object | None]:
    """``input_grad``'s (dx, dbeta), and a replay of its launches, ``replay(dy, dy_b, lora_A,
    beta, x_for_dbeta) -> (dx, dbeta)``, where there is one (as ``forward_replayable``)."""
    if backend == "triton":
        spec = block.spec
        if block.is_whole:
            return _kernels().seeded_linear_bwd_dx_replayable(
                dy, seed=spec.seed, stream=spec.stream, version=spec.version, init=spec.init,
                in_features=spec.in_features, dy_b=dy_b, lora_A=lora_A, beta=beta, scale=scale,
                x_for_dbeta=x_for_dbeta, need_dx=need_dx)
        kernels = _kernels()
        if kernels.block_regime(spec.version, dy.dtype, dy.is_cuda) is not None:
            return kernels.seeded_block_bwd_dx(dy, seed=spec.seed, stream=spec.stream, in_features=spec.in_features,
                                               rows=block.rows, cols=block.cols, dy_b=dy_b, lora_A=lora_A,
                                               beta=beta, scale=scale, x_for_dbeta=x_for_dbeta, need_dx=need_dx,
                                               bind=True)
    dx, dbeta = input_grad(backend, dy, block, dy_b, lora_A, beta, scale, x_for_dbeta, need_dx)
    return dx, dbeta, None


# Values per chunk of a block that the Triton generator makes: each chunk is a generator launch
# and a GEMM launch, so larger chunks than the torch backend's cost fewer launches.
GENERATED_BLOCK_VALUES = 1 << 21


def _generated_block(spec: BackboneSpec, rows: tuple[int, int], cols: tuple[int, int], dtype: torch.dtype,
                     device: torch.device, signs: bool) -> torch.Tensor:
    """W_seed[rows, cols] (or stream v2's signs) in ``dtype`` from the Triton generator: a
    ``torch_backend.weight_blocks`` generator."""
    from lottalora_kernels.backbone_gen import generate_backbone

    # Inside a torch.func transform (grad, vmap, jacrev) the kernel's output would be allocated
    # as a functorch wrapper, whose storage a launch cannot read; W depends on no input, so it is
    # made as a plain tensor, which the transform then lifts.
    with torch._C._DisableFuncTorch():
        return generate_backbone(spec.seed, spec.stream, spec.in_features, spec.init, rows, cols, device,
                                 version=spec.version, dtype=dtype, signs=signs)


def _generated_blocks(block: BackboneBlock, dtype: torch.dtype, device: torch.device) -> torch_backend.ColumnBlocks:
    """The block as the torch backend's loops take it, each chunk made by the Triton generator."""
    return torch_backend.weight_blocks(block, dtype, device, generator=_generated_block,
                                       values=GENERATED_BLOCK_VALUES)


def dense_block(spec: BackboneSpec, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """W_seed[rows, cols] as a float32 tensor on ``device`` (default: all of it, on the CPU), from
    the Triton generator where ``resolve_backend`` picks Triton, else from the PyTorch stream
    (the same bits)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    rows = rows if rows is not None else (0, spec.out_features)
    cols = cols if cols is not None else (0, spec.in_features)
    if resolve_backend(device) == "triton":
        BackboneBlock(spec, rows, cols)  # validates the ranges as backbone_block does
        return _generated_block(spec, rows, cols, torch.float32, device, signs=False)
    return backbone_block(spec, rows, cols, device)
