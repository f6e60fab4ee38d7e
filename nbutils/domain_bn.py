"""BN with several domains: K copies of a small BN MLP trained side by side, per-domain BN sets.

:class:`DomainMLP` holds K independent copies of ``Linear -> BN -> ReLU -> Linear -> BN -> ReLU
-> Linear`` for flattened inputs. The copies' weights are stacked, ``(K, in, out)``; their BN
layers are one ``nn.BatchNorm1d(K * hidden)`` per position, which equals K separate layers
because BN works channel by channel. With ``domains=D`` each position has D such layers (one
BN per domain, "domain-specific BN"); ``forward(x, domain=d)`` uses set ``d``.

:func:`train_domains` trains all copies with SGD on one or two domains, with batches that mix
the domains or come from one domain at a time; :func:`accuracy` evaluates every copy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["DomainMLP", "accuracy", "frozen_bn", "keep_running_stats", "train_domains"]


class DomainMLP(nn.Module):
    """K copies of a two-hidden-layer BN MLP; ``domains`` sets of BN layers.

    Inputs ``(B, in)`` (the same batch for every copy) or ``(K, B, in)``; output
    ``(K, B, classes)``. Copy k is initialized from ``torch.Generator().manual_seed(seeds[k])``.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        n_in: int = 64,
        hidden: int = 64,
        classes: int = 10,
        domains: int = 1,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(seeds, Sequence) or len(seeds) < 1:
            raise ValueError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
        if isinstance(domains, bool) or not isinstance(domains, int) or domains < 1:
            raise ValueError(f"domains must be an int >= 1, got {domains!r}")
        self.k, self.hidden = len(seeds), hidden
        shapes = [(n_in, hidden), (hidden, hidden), (hidden, classes)]
        weights = [[], [], []]
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            for j, (a, b) in enumerate(shapes):
                bound = 1 / math.sqrt(a)
                weights[j].append((torch.rand(a, b, generator=gen) * 2 - 1) * bound)
        self.weights = nn.ParameterList([nn.Parameter(torch.stack(w)) for w in weights])
        self.out_bias = nn.Parameter(torch.zeros(self.k, 1, classes))
        self.bns = nn.ModuleList(
            nn.ModuleList(
                nn.BatchNorm1d(self.k * hidden, momentum=momentum) for _ in range(domains)
            )
            for _ in range(2)
        )

    def _norm(self, h: torch.Tensor, bn: nn.Module) -> torch.Tensor:
        k, b, c = h.shape
        flat = h.permute(1, 0, 2).reshape(b, k * c)
        return bn(flat).reshape(b, k, c).permute(1, 0, 2)

    def forward(self, x: torch.Tensor, domain: int = 0) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(self.k, *x.shape)
        h = x
        for j in range(2):
            h = F.relu(self._norm(torch.bmm(h, self.weights[j]), self.bns[j][domain]))
        return torch.bmm(h, self.weights[2]) + self.out_bias


@torch.no_grad()
def accuracy(net: DomainMLP, x: torch.Tensor, y: torch.Tensor, domain: int = 0) -> torch.Tensor:
    """Eval-mode accuracy of every copy, ``(K,)``; the train/eval flag is restored."""
    was = net.training
    net.eval()
    try:
        return (net(x, domain).argmax(-1) == y).double().mean(dim=1)
    finally:
        net.train(was)


def train_domains(
    net: DomainMLP,
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    seeds: Sequence[int],
    batch: int,
    epochs: int,
    lr: float,
    batches: str = "mixed",
    separate_bn: bool = False,
    freeze_bn: bool = False,
) -> DomainMLP:
    """Train every copy with SGD (momentum 0.9, cosine schedule) on the domains in ``data``.

    ``data``: one ``(x, y)`` per domain, ``x`` of shape ``(N_d, in)``. ``batches="mixed"``
    draws each batch of ``batch`` samples equally from all domains; ``"per-domain"`` draws
    each batch from one domain, the domains taking turns. ``separate_bn`` (per-domain batches
    only) routes domain d's batches through BN set d. Copy k shuffles with
    ``seeds[k]``. An epoch is ``sum(N_d) // batch`` steps. ``freeze_bn`` trains with
    :func:`frozen_bn` applied (Frozen BN: eval-mode BN, affine parameters fixed).
    """
    if batches not in ("mixed", "per-domain"):
        raise ValueError(f"batches must be 'mixed' or 'per-domain', got {batches!r}")
    if separate_bn and batches != "per-domain":
        raise ValueError("separate_bn=True needs batches='per-domain'")
    n_dom = len(data)
    if batch % n_dom != 0:
        raise ValueError(f"batch must be a multiple of the {n_dom} domains, got {batch}")
    steps = epochs * sum(len(x) for x, _ in data) // batch
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    if freeze_bn:
        frozen_bn(net)
    for step in range(steps):
        if batches == "mixed":
            parts = [_draw(x, y, batch // n_dom, gens) for x, y in data]
            xb = torch.cat([p[0] for p in parts], dim=1)
            yb = torch.cat([p[1] for p in parts], dim=1)
            domain = 0
        else:
            d = step % n_dom
            xb, yb = _draw(*data[d], batch, gens)
            domain = d if separate_bn else 0
        out = net(xb, domain)
        loss = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="sum") / batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net


def _draw(x, y, size, gens):
    idx = torch.stack([torch.randint(len(x), (size,), generator=g) for g in gens])
    return x[idx], y[idx]


@contextlib.contextmanager
def keep_running_stats(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave every BN layer's running statistics as they were.

    ``num_batches_tracked`` is restored too, also when the block raises.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in layers
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(layers, saved, strict=True):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def frozen_bn(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every BN layer: eval mode (running statistics used, not updated), affine fixed.

    Returns the BN parameters it froze. Note: ``model.train()`` afterwards puts the BN layers
    back in train mode; call it again after every ``model.train()``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    frozen = []
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
                frozen.append(p)
    return frozen
