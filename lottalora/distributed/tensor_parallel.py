"""Tensor parallelism for seeded layers: each rank regenerates only its own block of W_seed.

    parallelize_module(model, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})

``ColwiseParallel`` and ``RowwiseParallel`` are torch's styles (same arguments: input_layouts,
output_layouts, use_local_output), extended to ``lottalora.Linear``; on ``nn.Linear`` and
``nn.Embedding`` they do exactly what torch's do, so one plan can mix both kinds of layer.

Column-parallel (the output features split; rows of W_seed): rank i owns rows [r0, r1) of the
backbone and of lora_B and bias (``Shard(0)``); lora_A and beta are replicated. Its input is
replicated, its output sharded on the last dim.
    y_i = beta * x @ W[r0:r1]^T + s * (x @ A^T) @ B_i^T + bias_i
Row-parallel (the input features split; columns of W_seed): rank i owns columns [c0, c1) of the
backbone and of lora_A (``Shard(1)``); lora_B, beta and bias are replicated. Its input is
sharded on the last dim; the partial products are summed across ranks (one all-reduce of the
output, as torch's row-parallel nn.Linear) before the bias is added.
    y = sum_i (beta * x_i @ W[:, c0:c1]^T + s * (x_i @ A_i^T) @ B^T) + bias

The backward is Megatron's: where a replicated tensor (the column-parallel input, lora_A and beta
there; lora_B and beta in the row-parallel layer) meets a rank's block, the rank's gradient is a
partial sum and is all-reduced, so replicated parameters get identical, complete gradients.
A replicated parameter's 16-bit gradient is summed over the ranks in float32 and rounded to its
dtype after the sum (a 16-bit ring sum rounds at every rank it passes); activations (the
row-parallel output, the column-parallel input's gradient) are summed in their own dtype, as
torch's and Megatron's styles do.
Row and column ranges split like torch's ``Shard`` (``torch.chunk``: ceil(n / ranks) each, the
last ranks possibly shorter or empty). Each style checks that every rank of the mesh holds the
same backbone (``check_same_backbone``) before it shards a layer.

lora_dropout: the column-parallel input is replicated, so every rank must drop the same
elements (different masks would make each rank's output columns a different function). The
ranks agree on a seed when the layer is sharded (rank 0's, drawn from its torch generator) and
draw the masks from a generator of their own, in step. DTensor's random ops would do this on
CUDA but not on CPU meshes. The row-parallel input is sharded: each rank drops its own columns
with torch's generator, as an unsharded dropout would with independent elements. The dropped
input is the block op's ``lora_input`` (the adapter stays in the op, as in ``lottalora.Linear``);
in the column-parallel layer it is made from the input after the point where the input's
gradient is all-reduced, so the backbone's and the adapter's parts of it are summed together.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import style as torch_styles

from ..nn import Linear
from ..ops import seeded_linear_shard
from .backbone_check import check_same_backbone


class _AllReduceInBackward(torch.autograd.Function):
    """Identity forward; the gradient is summed over the group (Megatron's "copy to the
    tensor-parallel region"): for a replicated tensor used by every rank's block.
    ``in_float32``: a 16-bit gradient is summed in float32 and rounded to its dtype after the
    sum (a bf16 ring sum rounds at every rank it passes); for the replicated parameters, whose
    gradients are small, not for the activations."""

    @staticmethod
    def forward(ctx, t, group, in_float32=False):
        ctx.group, ctx.in_float32 = group, in_float32
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        if ctx.in_float32 and grad.dtype in (torch.float16, torch.bfloat16):
            summed = grad.float()  # a copy
            dist.all_reduce(summed, group=ctx.group)
            return summed.to(grad.dtype), None, None
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None, None


class _AllReduceInForward(torch.autograd.Function):
    """Sum over the group forward; identity backward (Megatron's "reduce from the
    tensor-parallel region"): the row-parallel output."""

    @staticmethod
    def forward(ctx, t, group):
        out = t.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def chunk_range(size: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part ``index`` when ``size`` is split in ``parts`` as torch.chunk does."""
    step = math.ceil(size / parts) if size else 0
    start = min(index * step, size)
    return start, min(start + step, size)


class TensorParallelPlan:
    """What a style gives a ``TensorParallelLinear``: which block of W_seed this rank computes
    and how its forward meets the other ranks."""

    def __init__(self, kind: str, mesh, rows: tuple[int, int], cols: tuple[int, int], dropout_seed: int | None = None):
        self.kind, self.mesh, self.rows, self.cols = kind, mesh, rows, cols
        self.dropout_seed = dropout_seed
        self._dropout_generator = None

    def _dropout_mask(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """The same keep-mask (scaled by 1 / (1 - p)) on every rank of the mesh."""
        if self._dropout_generator is None or self._dropout_generator.device != x.device:
            self._dropout_generator = torch.Generator(device=x.device).manual_seed(self.dropout_seed)
        keep = torch.rand(x.shape, generator=self._dropout_generator, device=x.device) >= p
        return keep.to(x.dtype) / (1 - p)

    def __repr__(self) -> str:
        return f"TensorParallelPlan({self.kind}, rows={self.rows}, cols={self.cols})"

    def forward(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        group = self.mesh.get_group()
        dropout = layer.lora_A is not None and layer.lora_dropout > 0 and layer.training
        local = {name: (p.to_local() if isinstance(p, DTensor) else p) for name, p in
                 (("lora_A", layer.lora_A), ("lora_B", layer.lora_B), ("beta", layer.beta), ("bias", layer.bias))}
        x_local = x.to_local()
        if self.kind == "colwise":
            # The dropped input is made after the all-reduce point: this rank's gradients of x
            # through the backbone and through the adapter add up there and are summed once.
            x_local = _AllReduceInBackward.apply(x_local, group)
            lora_input = x_local * self._dropout_mask(x_local, layer.lora_dropout) if dropout else None
            replicated, bias = ("lora_A", "beta"), local["bias"]
        else:
            lora_input = nn.functional.dropout(x_local, layer.lora_dropout, training=True) if dropout else None
            replicated, bias = ("lora_B", "beta"), None
        for name in replicated:
            if local[name] is not None and local[name].requires_grad:
                local[name] = _AllReduceInBackward.apply(local[name], group, True)
        y = seeded_linear_shard(x_local, layer.spec, self.rows, self.cols, local["lora_A"], local["lora_B"],
                                local["beta"], bias, layer.scaling, lora_input=lora_input)
        if self.kind == "colwise":
            # The global shape given: from_local would take every rank's block to be this one's
            # size, which uneven blocks (out_features not a multiple of the ranks) are not.
            shape = (*y.shape[:-1], layer.out_features)
            stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))  # contiguous
            return DTensor.from_local(y, self.mesh, [Shard(-1)], run_check=False, shape=torch.Size(shape),
                                      stride=stride)
        y = _AllReduceInForward.apply(y, group)
        if local["bias"] is not None:
            y = y + local["bias"]
        return DTensor.from_local(y, self.mesh, [Replicate()], run_check=False)


def _distribute_parameters(module: Linear, mesh, placements: dict[str, list], src_data_rank) -> None:
    for name, placement in placements.items():
        param = getattr(module, name)
        if param is None:
            continue
        sharded = distribute_tensor(param.detach(), mesh, placement, src_data_rank=src_data_rank)
        module.register_parameter(name, nn.Parameter(sharded, requires_grad=param.requires_grad))


def _check_layer(module: Linear, mesh) -> None:
    if mesh.ndim != 1:
        raise ValueError(f"tensor parallelism of a lottalora.Linear takes a 1-D device mesh, got {mesh.ndim}-D "
                         "(pass the tensor-parallel dimension, e.g. mesh['tp'])")
    if module.shard is not None or any(isinstance(p, DTensor) for p in module.parameters()):
        raise ValueError("this lottalora.Linear is already sharded (tensor parallel or FSDP2): apply tensor "
                         "parallelism first, once per layer")
    if module.use_dora:
        raise ValueError("tensor parallelism of a DoRA lottalora.Linear (use_dora=True) is not supported: DoRA's "
                         "row norms span whole rows of W_seed, which a row-parallel rank does not hold")
    check_same_backbone(module, group=mesh.get_group())


def _shared_seed(mesh) -> int:
    """A seed drawn from rank 0's torch generator, the same on every rank of ``mesh``."""
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(mesh.device_type)
    dist.broadcast(seed, group=mesh.get_group(), group_src=0)
    return int(seed.item())


def _check_local_size(module: Linear, name: str, dim: int, want: int) -> None:
    param = getattr(module, name)
    if param is not None and param.to_local().shape[dim] != want:
        raise RuntimeError(f"{name} was sharded into {param.to_local().shape[dim]} on this rank where "
                           f"{want} were expected: torch's Shard split differs from chunk_range")


class TensorParallelLinear(Linear):
    """A ``lottalora.Linear`` under tensor parallelism: its parameters are DTensors and it computes
    only this rank's block of W_seed (``plan``). The styles turn a Linear into one in place (its
    class changes, as FSDP2's ``fully_shard`` changes a module's class); nothing else about the
    layer changes, so its state_dict and checkpoints are the unsharded layer's."""

    plan: TensorParallelPlan

    @classmethod
    def adopt(cls, module: Linear, plan: TensorParallelPlan) -> None:
        """Make ``module`` a TensorParallelLinear computing ``plan``'s block."""
        module.__class__ = cls if type(module) is Linear else _tensor_parallel_class(type(module))
        module.plan = plan

    @property
    def shard(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.plan.rows, self.plan.cols

    def forward(self, x, adapter_names=None):
        if adapter_names is not None or self.named_adapters or self.active_adapter != "default":
            raise ValueError("a tensor-parallel seeded layer runs its default adapter only: named adapters, "
                             "disable_adapter and mixed batches are not sharded (remove them before "
                             "parallelize_module, or run an unsharded copy)")
        return self.plan.forward(self, x)


_TENSOR_PARALLEL_CLASSES: dict[type, type] = {}


def _tensor_parallel_class(cls: type) -> type:
    """TensorParallelLinear's behaviour on a subclass of Linear: the subclass's own methods first
    (its forward reaches TensorParallelLinear's through super(), as it reached Linear's)."""
    if cls not in _TENSOR_PARALLEL_CLASSES:
        _TENSOR_PARALLEL_CLASSES[cls] = type(f"TensorParallel{cls.__name__}", (cls, TensorParallelLinear), {})
    return _TENSOR_PARALLEL_CLASSES[cls]


def _shard_seeded_layer(style, module: Linear, mesh, shard: TensorParallelPlan, placements: dict,
                        local_sizes: list[tuple[str, int, int]]) -> nn.Module:
    """What both styles do to a checked ``lottalora.Linear``: distribute its parameters with
    ``placements``, check each (name, dim, size) in ``local_sizes`` against this rank's block,
    install ``shard`` and wrap the module with the style's input and output layouts."""
    _distribute_parameters(module, mesh, placements, style.src_data_rank)
    for name, dim, size in local_sizes:
        _check_local_size(module, name, dim, size)
    TensorParallelLinear.adopt(module, shard)
    return distribute_module(
        module, mesh, None,
        partial(style._prepare_input_fn, style.input_layouts, style.desired_input_layouts),
        partial(style._prepare_output_fn, style.output_layouts, style.use_local_output),
    )


class ColwiseParallel(torch_styles.ColwiseParallel):
    """torch's ColwiseParallel, extended to ``lottalora.Linear``: this rank owns rows of W_seed
    (its output features) and regenerates only those (see the module docstring)."""

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if not isinstance(module, Linear):
            return super()._apply(module, device_mesh)
        _check_layer(module, device_mesh)
        rows = chunk_range(module.out_features, device_mesh.size(), device_mesh.get_local_rank())
        shard = TensorParallelPlan("colwise", device_mesh, rows, (0, module.in_features),
                                     dropout_seed=_shared_seed(device_mesh))
        return _shard_seeded_layer(self, module, device_mesh, shard,
                                   {"lora_A": [Replicate()], "lora_B": [Shard(0)], "beta": [Replicate()],
                                    "bias": [Shard(0)]},
                                   [("lora_B", 0, rows[1] - rows[0]), ("bias", 0, rows[1] - rows[0])])


class RowwiseParallel(torch_styles.RowwiseParallel):
    """torch's RowwiseParallel, extended to ``lottalora.Linear``: this rank owns columns of W_seed
    (its input features) and regenerates only those (see the module docstring)."""

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if not isinstance(module, Linear):
            return super()._apply(module, device_mesh)
        _check_layer(module, device_mesh)
        self.desired_input_layouts = (Shard(-1),)
        cols = chunk_range(module.in_features, device_mesh.size(), device_mesh.get_local_rank())
        shard = TensorParallelPlan("rowwise", device_mesh, (0, module.out_features), cols)
        return _shard_seeded_layer(self, module, device_mesh, shard,
                                   {"lora_A": [Shard(1)], "lora_B": [Replicate()], "beta": [Replicate()],
                                    "bias": [Replicate()]},
                                   [("lora_A", 1, cols[1] - cols[0])])
