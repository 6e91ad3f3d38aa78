"""The rank sweep on scikit-learn's digits: full training against LottaLoRA at several ranks.

The paper's core result in two minutes on a laptop CPU: an MLP whose hidden layers are frozen
random (a seed each) plus a rank-r adapter and a trainable beta and bias gets close to the fully
trained MLP, and the smallest rank that saturates estimates the task's intrinsic dimension.
The digits data set ships inside scikit-learn (no download).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .linear import Linear


@dataclass
class SweepResult:
    """One row of the sweep: rank None is full training."""

    rank: int | None
    trainable_params: int
    test_accuracy: float
    betas: list[float] = field(default_factory=list)
    seconds: float = 0.0
    model: nn.Module | None = field(default=None, repr=False)


def load_digits_split(seed: int, device: torch.device, test_fraction: float = 0.2):
    """Standardised digits features and labels, split with a fixed stratified shuffle."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=test_fraction, random_state=seed, stratify=data.target)
    x_train = torch.tensor(x_train, dtype=torch.float32)
    x_test = torch.tensor(x_test, dtype=torch.float32)
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-3)
    to = lambda t: t.to(device)  # noqa: E731
    return (to((x_train - mean) / std), to(torch.tensor(y_train)),
            to((x_test - mean) / std), to(torch.tensor(y_test)))


def build_mlp(in_features: int, hidden: tuple[int, ...], classes: int, rank: int | None,
              init: str, seed: int, device: torch.device) -> nn.Sequential:
    """Hidden layers as nn.Linear (rank None) or lottalora.Linear (stream = layer index); the
    head is an ordinary trainable nn.Linear in both."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = in_features
    for index, out in enumerate(hidden):
        if rank is None:
            layers.append(nn.Linear(width, out))
        else:
            layers.append(Linear(width, out, rank=rank, seed=seed, stream=index, init=init))
        layers.append(nn.ReLU())
        width = out
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers).to(device)


def train_and_evaluate(model: nn.Module, data, *, epochs: int, lr: float, batch_size: int,
                       seed: int, progress=None) -> float:
    """Adam with cross-entropy; returns test accuracy."""
    x_train, y_train, x_test, y_test = data
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(x_train.shape[0], generator=gen).to(x_train.device)
        for start in range(0, x_train.shape[0], batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if progress is not None:
            progress.update(1)
    model.eval()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


def run_sweep(ranks: list[int], *, init: str = "gaussian", epochs: int = 40, seed: int = 0,
              hidden: tuple[int, ...] = (32, 32), batch_size: int = 128, lr_full: float = 1e-3,
              lr_lora: float = 3e-3, device: torch.device | None = None, show_progress: bool = True):
    """Full training plus one LottaLoRA run per rank. Returns (full, [per rank]) SweepResults;
    each LottaLoRA result keeps its trained model in ``.model``."""
    from tqdm.auto import tqdm

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_digits_split(seed, device)
    results = []
    progress = tqdm(total=epochs * (len(ranks) + 1), desc="digits sweep", unit="epoch",
                    disable=not show_progress, leave=False)
    for rank in [None, *ranks]:
        model = build_mlp(64, hidden, 10, rank, init, seed, device)
        progress.set_postfix_str("full" if rank is None else f"rank {rank}")
        start = time.perf_counter()
        acc = train_and_evaluate(model, data, epochs=epochs, lr=lr_full if rank is None else lr_lora,
                                 batch_size=batch_size, seed=seed, progress=progress)
        betas = [m.beta.item() for m in model.modules() if isinstance(m, Linear)]
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        results.append(SweepResult(rank, trainable, acc, betas, time.perf_counter() - start,
                                   model if rank is not None else None))
    progress.close()
    return results[0], results[1:]


def saturation_rank(full: SweepResult, sweep: list[SweepResult], tolerance: float) -> int | None:
    """The smallest rank whose accuracy is within ``tolerance`` (a fraction) of full training."""
    for row in sorted(sweep, key=lambda r: r.rank):
        if row.test_accuracy >= (1.0 - tolerance) * full.test_accuracy:
            return row.rank
    return None


def best_seeded(sweep: list[SweepResult]) -> SweepResult:
    """The most accurate LottaLoRA run; among equals, the smallest rank."""
    return max(sweep, key=lambda r: (r.test_accuracy, -r.rank))


def format_table(full: SweepResult, sweep: list[SweepResult]) -> str:
    """The sweep as a markdown table."""
    lines = ["| rank | trainable params | test accuracy | ratio to full | betas | seconds |",
             "|---|---|---|---|---|---|"]
    for row in [full, *sweep]:
        name = "full" if row.rank is None else str(row.rank)
        betas = ", ".join(f"{b:.3f}" for b in row.betas) or "-"
        lines.append(f"| {name} | {row.trainable_params:,} | {row.test_accuracy:.4f} | "
                     f"{row.test_accuracy / full.test_accuracy:.4f} | {betas} | {row.seconds:.1f} |")
    return "\n".join(lines)


def plot_sweep(full: SweepResult, sweep: list[SweepResult], path: str, saturation: int | None) -> None:
    """Accuracy against rank (log2 axis) with the full-training line, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = [r.rank for r in sweep]
    positions = list(range(len(ranks)))  # categorical: rank 0 has no place on a log axis
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(positions, [r.test_accuracy for r in sweep], "o-", label="LottaLoRA (frozen random + rank r)")
    ax.axhline(full.test_accuracy, color="k", linestyle="--", label="full training")
    if saturation is not None:
        ax.axvline(ranks.index(saturation), color="tab:green", linestyle=":",
                   label=f"saturation rank {saturation}")
    ax.set_xticks(positions, [str(r) for r in ranks])
    ax.set_xlabel("rank")
    ax.set_ylabel("test accuracy")
    ax.set_title("digits: accuracy against adapter rank")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


