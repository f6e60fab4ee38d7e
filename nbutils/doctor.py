"""A BatchNorm doctor: :func:`diagnose` lists the normalization pitfalls it finds in a model.

``diagnose(model, loader=None, stage=None)`` inspects any ``nn.Module`` and returns a
:class:`Report`: a list of :class:`Finding` objects that prints as a text table (``str``) and as
a Markdown/HTML table in a notebook. Each finding names the layer, the evidence (a measured number
where there is one), a severity (``"error"``, ``"warning"`` or ``"info"``) and the chapter of the
book that explains it.

What is checked (``Report.checks`` lists the checks that ran):

==================  =============================================================  ==========
check               finds                                                          needs
==================  =============================================================  ==========
``dropout_to_bn``   Dropout whose output reaches a BN layer (variance shift)       batch [#]_
``momentum``        BN momentum far from the usual range, Keras's 0.9/0.99          --
``dropout_rank``    ``Dropout1d/2d/3d`` on an input of another rank                batch [#]_
``tiny_batch``      BN layers normalizing over few samples or values               batch
``stale_stats``     running statistics far from a Precise-BN estimate              batch
``no_running``      ``track_running_stats=False`` (also when set after building)    --
``frozen_affine``   BN affine frozen while its statistics still update             --
``train_mode``      BN or Dropout left in train mode for evaluation                 --
``shared_bn``       one BN layer called several times per forward pass             batch
``bias_before_bn``  a Linear/Conv bias right before BN (BN's shift cancels it)     batch
==================  =============================================================  ==========

.. [#] Without a batch the structure is read from ``nn.Sequential`` containers only (module
   order), which misses connections made in a ``forward`` method.

With a ``loader`` (an iterable of tensors or of ``(x, y)`` tuples, e.g. a ``DataLoader``), the
first batch is run once through a *copy* of the model in train mode under ``torch.no_grad()``
(the model itself is not changed): forward hooks record the order of the calls and the shapes
they see, and a :class:`torch.overrides.TorchFunctionMode` follows every tensor that descends
from a Dropout output through any operation (module or functional) until it reaches a BN layer,
whose output counts as clean again. This works on models that ``torch.fx`` cannot trace (data-
dependent control flow, asserts on values). Up to ``max_batches`` batches feed a Precise-BN
estimate (:func:`nbutils.recalibration.precise_bn`) on another copy, compared with the stored
running statistics. ``stage="eval"`` says the model is about to be evaluated (train-mode layers
are errors), ``stage="train"`` that it is being trained or fine-tuned; ``None`` reports the mode
as information.

    >>> report = diagnose(model, loader)        # doctest: +SKIP
    >>> report                                  # a table in a notebook
    >>> [f.check for f in report.errors]        # programmatic use
"""

from __future__ import annotations

import copy
import html
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from nbutils.recalibration import _input_of, precise_bn

__all__ = ["CHAPTERS", "CHECKS", "SEVERITIES", "Finding", "Report", "diagnose"]

SEVERITIES = ("error", "warning", "info")

#: The chapter (a path relative to ``chapters/``) that explains each check.
CHAPTERS = {
    "dropout_to_bn": "part4-bn-meets-dropout/08-variance-shift",
    "momentum": "part2-batchnorm/06-bn-in-pytorch",
    "dropout_rank": "part1-regularization/03-dropout",
    "tiny_batch": "part5-bn-in-the-wild/10-normalization-batch-size",
    "stale_stats": "part5-bn-in-the-wild/09-ema-vs-precise-bn",
    "no_running": "part2-batchnorm/06-bn-in-pytorch",
    "frozen_affine": "part5-bn-in-the-wild/11-bn-across-processes-and-domains",
    "train_mode": "part2-batchnorm/06-bn-in-pytorch",
    "shared_bn": "part5-bn-in-the-wild/11-bn-across-processes-and-domains",
    "bias_before_bn": "part2-batchnorm/06-bn-in-pytorch",
}
CHECKS = tuple(CHAPTERS)

#: Thresholds of the checks (documented in :func:`diagnose`).
MOMENTUM_RANGE = (0.01, 0.2)
KERAS_MOMENTUM = 0.5
TINY_SAMPLES, TINY_VALUES = 8, 32
STALE_MEAN, STALE_VAR = 0.5, 1.5
_STAGES = (None, "train", "eval")
_EXPECTED_RANK = {nn.Dropout1d: (3,), nn.Dropout2d: (4,), nn.Dropout3d: (5,)}
_RANK_NOTE = {
    nn.Dropout1d: "a 2-D input is taken as one unbatched (C, L) sample: whole rows of the batch "
    "are dropped together",
    nn.Dropout2d: "a 2-D input is deprecated and dropped element-wise (plain Dropout); a 3-D "
    "input is taken as (N, C, L)",
    nn.Dropout3d: "a 4-D input is taken as one unbatched (C, D, H, W) sample",
}


@dataclass(frozen=True)
class Finding:
    """One pitfall: which ``check`` found it, in which ``layer``, and why it matters.

    ``evidence`` is a sentence with the measured number where there is one, ``value`` that
    number (or None), ``severity`` one of :data:`SEVERITIES`, ``chapter`` the chapter of the
    book that explains it, ``advice`` what to do.
    """

    check: str
    layer: str
    severity: str
    evidence: str
    advice: str
    value: float | None = None

    @property
    def chapter(self) -> str:
        return CHAPTERS[self.check]


@dataclass
class Report:
    """The findings of :func:`diagnose`, most severe first, with the checks that ran."""

    findings: list[Finding] = field(default_factory=list)
    checks: tuple[str, ...] = ()
    model_name: str = "model"

    def __len__(self) -> int:
        return len(self.findings)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def __bool__(self) -> bool:
        return True  # a report without findings is still a report

    def by_check(self, check: str) -> list[Finding]:
        """The findings of one check (a name from :data:`CHECKS`)."""
        if check not in CHECKS:
            raise ValueError(f"check must be one of {list(CHECKS)}, got {check!r}")
        return [f for f in self.findings if f.check == check]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def _rows(self) -> list[tuple[str, str, str, str, str]]:
        return [(f.severity, f.check, f.layer, f.evidence, f.chapter) for f in self.findings]

    def __str__(self) -> str:
        head = f"BN doctor: {self.model_name}, {len(self.findings)} finding(s)"
        if not self.findings:
            return head + f" (checks run: {', '.join(self.checks)})"
        lines = [head]
        for sev, check, layer, evidence, chapter in self._rows():
            lines.append(f"[{sev}] {check} at {layer or '(model)'}: {evidence} (see {chapter})")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        head = f"**BN doctor: `{self.model_name}`, {len(self.findings)} finding(s)**\n\n"
        if not self.findings:
            return head + f"Checks run: {', '.join(self.checks)}."
        rows = ["| severity | check | layer | evidence | chapter |", "|---|---|---|---|---|"]
        for sev, check, layer, evidence, chapter in self._rows():
            ev = evidence.replace("|", "\\|")
            rows.append(f"| {sev} | {check} | `{layer or '(model)'}` | {ev} | {chapter} |")
        return head + "\n".join(rows)

    def _repr_html_(self) -> str:
        head = (
            f"<p><b>BN doctor: <code>{html.escape(self.model_name)}</code>, "
            f"{len(self.findings)} finding(s)</b></p>"
        )
        if not self.findings:
            return head + f"<p>Checks run: {html.escape(', '.join(self.checks))}.</p>"
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
            for row in self._rows()
        )
        th = "".join(f"<th>{h}</th>" for h in ("severity", "check", "layer", "evidence", "chapter"))
        return f"{head}<table><tr>{th}</tr>{cells}</table>"


# --------------------------------------------------------------------------------------------
# Checks that need no data


def _bn_modules(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def _check_momentum(model: nn.Module, stage: str | None) -> list[Finding]:
    out = []
    lo, hi = MOMENTUM_RANGE
    for name, m in _bn_modules(model):
        if not m.track_running_stats:
            continue
        mom = m.momentum
        if mom is None:
            out.append(
                Finding(
                    "momentum",
                    name,
                    "warning",
                    "momentum=None: a cumulative average over every batch since the start, "
                    "which keeps statistics of long-gone weights",
                    "use a momentum (0.1) in training; recompute with Precise BN at the end",
                )
            )
        elif mom == 0:
            if stage != "eval":  # in eval mode the momentum is not used
                out.append(
                    Finding(
                        "momentum",
                        name,
                        "warning",
                        "momentum=0: the running statistics never change in training, "
                        "whatever the batches",
                        "use a momentum (0.1); eval() alone stops the updates at evaluation",
                        0.0,
                    )
                )
        elif mom >= KERAS_MOMENTUM:
            out.append(
                Finding(
                    "momentum",
                    name,
                    "error",
                    f"momentum={mom:g}: PyTorch weights the *new* batch by momentum, so the "
                    f"running statistics are about the last batch's (Keras convention "
                    f"{mom:g} means PyTorch {1 - mom:.2g})",
                    f"pass momentum={1 - mom:.2g}",
                    mom,
                )
            )
        elif not lo <= mom <= hi:
            kind = f"lags (averages ~{(2 - mom) / mom:.0f} batches)" if mom < lo else "noisy"
            out.append(
                Finding(
                    "momentum",
                    name,
                    "warning",
                    f"momentum={mom:g} is outside the usual {lo:g} to {hi:g}: the average {kind}",
                    "use 0.1, or recompute the statistics with Precise BN before evaluating",
                    mom,
                )
            )
    return out


def _check_no_running(model: nn.Module) -> list[Finding]:
    out = []
    for name, m in _bn_modules(model):
        if m.track_running_stats:
            continue
        if m.running_mean is not None:
            out.append(
                Finding(
                    "no_running",
                    name,
                    "warning",
                    "track_running_stats was set to False after construction: eval mode still "
                    "normalizes with the stored buffers, and train mode stops updating them",
                    "build the layer with track_running_stats=False, or leave it True",
                )
            )
        else:
            out.append(
                Finding(
                    "no_running",
                    name,
                    "warning",
                    "track_running_stats=False: every prediction is normalized with its own "
                    "batch's statistics, so it depends on the other samples of the batch",
                    "keep running statistics for deployment, or use GroupNorm/LayerNorm",
                )
            )
    return out


def _check_frozen_affine(model: nn.Module, stage: str | None) -> list[Finding]:
    if stage == "eval":
        return []
    out = []
    for name, m in _bn_modules(model):
        params = list(m.parameters(recurse=False))
        if not params or any(p.requires_grad for p in params):
            continue
        if m.training and m.track_running_stats and m.momentum != 0:
            out.append(
                Finding(
                    "frozen_affine",
                    name,
                    "warning",
                    "weight and bias are frozen (requires_grad=False) but the layer is in "
                    "train mode: it normalizes with batch statistics and keeps updating its "
                    "running statistics",
                    "put the layer in eval mode after every model.train() (frozen BN)",
                )
            )
    return out


def _check_train_mode(model: nn.Module, stage: str | None) -> list[Finding]:
    if stage == "train":
        return []
    layers = [
        n
        for n, m in model.named_modules()
        if m.training and isinstance(m, (_BatchNorm, _DropoutNd, nn.AlphaDropout))
    ]
    if not layers:
        return []
    severity = "error" if stage == "eval" else "info"
    shown = ", ".join(layers[:3]) + (", ..." if len(layers) > 3 else "")
    return [
        Finding(
            "train_mode",
            "",
            severity,
            f"{len(layers)} BN/Dropout layer(s) in train mode ({shown}): an evaluation now "
            "uses batch statistics and drops units",
            "call model.eval() before evaluating, model.train() before training",
            float(len(layers)),
        )
    ]


# --------------------------------------------------------------------------------------------
# Structure from module order (no data)

_PASS_THROUGH = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Flatten,
    nn.Identity,
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.ELU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool2d,
)
_DROPOUTS = (_DropoutNd, nn.AlphaDropout)


def _static_structure(model: nn.Module) -> list[Finding]:
    out = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for i, (name, child) in enumerate(children):
            full = f"{seq_name}.{name}" if seq_name else name
            if isinstance(child, _DROPOUTS):
                for later_name, later in children[i + 1 :]:
                    if isinstance(later, _BatchNorm):
                        bn = f"{seq_name}.{later_name}" if seq_name else later_name
                        out.append(_dropout_bn_finding(bn, full, "module order"))
                        break
                    if not isinstance(later, _PASS_THROUGH):
                        break
            if isinstance(child, tuple(_EXPECTED_RANK)) and i > 0:
                before = children[i - 1 :: -1]
                for _, prev in before:
                    if isinstance(prev, (nn.Linear, nn.BatchNorm1d, nn.LayerNorm)):
                        out.append(
                            _rank_finding(
                                full,
                                child,
                                None,
                                "likely a 2-D input (it follows a "
                                f"{type(prev).__name__} in its Sequential)",
                            )
                        )
                        break
                    if isinstance(prev, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                        break
    return out


def _dropout_bn_finding(bn: str, dropout: str, how: str, ratio: float | None = None) -> Finding:
    evidence = f"Dropout `{dropout}` feeds this BN layer ({how})"
    if ratio is not None:
        evidence += f"; train/eval input variance ratio {ratio:.3g}"
    return Finding(
        "dropout_to_bn",
        bn,
        "warning",
        evidence,
        "move Dropout after the last BN layer, or recalibrate BN with Dropout off",
        ratio,
    )


def _rank_severity(kind: type, rank: int | None) -> str:
    """error where whole samples are dropped together or the rank is meaningless."""
    if rank is None:
        return "warning"
    if kind is nn.Dropout2d and rank in (2, 3):
        return "warning"  # element-wise (deprecated) or channel-wise over (N, C, L)
    return "error"  # Dropout1d on 2-D, Dropout3d on 4-D: one unbatched sample; others


def _rank_finding(name: str, module: nn.Module, rank: int | None, how: str) -> Finding:
    kind = type(module)
    expected = _EXPECTED_RANK[kind][0]
    evidence = f"{kind.__name__} expects a {expected}-D batch, {how}: {_RANK_NOTE[kind]}"
    return Finding(
        "dropout_rank",
        name,
        _rank_severity(kind, rank),
        evidence,
        "use nn.Dropout for (N, features) inputs",
        None if rank is None else float(rank),
    )


# --------------------------------------------------------------------------------------------
# Structure and statistics from a probe batch


class _Taint(TorchFunctionMode):
    """Marks every tensor computed from a marked tensor with the same source name."""

    def __init__(self) -> None:
        super().__init__()
        self.source: dict[int, str] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while probing

    def mark(self, t: object, name: str | None) -> None:
        for leaf in tree_flatten(t)[0]:
            if isinstance(leaf, torch.Tensor):
                self.keep.append(leaf)
                if name is None:
                    self.source.pop(id(leaf), None)
                else:
                    self.source[id(leaf)] = name

    def of(self, t: object) -> str | None:
        for leaf in tree_flatten(t)[0]:
            if isinstance(leaf, torch.Tensor) and id(leaf) in self.source:
                return self.source[id(leaf)]
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        src = self.of((args, kwargs or {}))
        if src is not None:
            self.mark(out, src)
        return out


@dataclass
class _Probe:
    bn_calls: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    bn_means: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    bn_vars: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    bn_from_dropout: dict[str, str] = field(default_factory=dict)
    bn_after_bias: dict[str, str] = field(default_factory=dict)
    dropout_ranks: dict[str, int] = field(default_factory=dict)
    failed: str | None = None


def _probe(model: nn.Module, x: torch.Tensor) -> _Probe:
    net = copy.deepcopy(model).train()
    names = {m: n for n, m in net.named_modules()}
    res, taint, biased = _Probe(), _Taint(), {}
    handles = []

    def pre_bn(module, args):
        name = names[module]
        inp = args[0]
        res.bn_calls.setdefault(name, []).append(tuple(inp.shape))
        dims = [d for d in range(inp.dim()) if d != 1]
        res.bn_means.setdefault(name, []).append(inp.double().mean(dim=dims))
        res.bn_vars.setdefault(name, []).append(inp.double().var(dim=dims, correction=0))
        src = taint.of(inp)
        if src is not None:
            res.bn_from_dropout.setdefault(name, src)
        if id(inp) in biased:
            res.bn_after_bias.setdefault(name, biased[id(inp)])

    def post_bn(module, args, out):
        taint.mark(out, None)

    def post_dropout(module, args, out):
        res.dropout_ranks.setdefault(names[module], args[0].dim())
        taint.mark(out, names[module])

    def post_affine(module, args, out):
        if getattr(module, "bias", None) is not None:
            taint.keep.append(out)
            biased[id(out)] = names[module]

    for m in net.modules():
        if isinstance(m, _BatchNorm):
            handles += [m.register_forward_pre_hook(pre_bn), m.register_forward_hook(post_bn)]
        elif isinstance(m, _DROPOUTS):
            handles.append(m.register_forward_hook(post_dropout))
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(m.register_forward_hook(post_affine))
    try:
        with torch.no_grad(), taint:
            net(x)
    except ValueError as exc:  # BN in train mode on one value per channel raises
        res.failed = str(exc)
    finally:
        for h in handles:
            h.remove()
    return res


def _probe_findings(model: nn.Module, res: _Probe) -> list[Finding]:
    out = []
    modules = dict(model.named_modules())
    for bn, src in res.bn_from_dropout.items():
        out.append(_dropout_bn_finding(bn, src, "traced on a batch"))
    for name, rank in res.dropout_ranks.items():
        kind = type(modules[name])
        if kind in _EXPECTED_RANK and rank not in _EXPECTED_RANK[kind]:
            out.append(_rank_finding(name, modules[name], rank, f"got a {rank}-D input"))
    for name, shapes in res.bn_calls.items():
        n, values = shapes[0][0], math.prod(shapes[0]) // shapes[0][1]
        if n < TINY_SAMPLES or values < TINY_VALUES:
            out.append(
                Finding(
                    "tiny_batch",
                    name,
                    "warning" if values > 1 else "error",
                    f"normalizes over {n} sample(s), {values} value(s) per channel in training",
                    "use larger batches, GhostBN/BatchRenorm, or GroupNorm/LayerNorm",
                    float(n),
                )
            )
        if len(shapes) > 1:
            means = torch.stack(res.bn_means[name])  # (calls, C)
            sd = torch.stack(res.bn_vars[name]).mean(dim=0).add(1e-12).sqrt()
            spread = (means.std(dim=0) / sd).mean().item()
            out.append(
                Finding(
                    "shared_bn",
                    name,
                    "warning",
                    f"called {len(shapes)} times per forward pass; the calls' batch means "
                    f"differ by {spread:.3g} SD (SD over calls, mean over channels): training "
                    "normalizes each call by its own statistics, evaluation all by one mixed "
                    "average",
                    "give each branch its own BN layer, or run the branches as one batch",
                    spread,
                )
            )
    for bn, src in res.bn_after_bias.items():
        out.append(
            Finding(
                "bias_before_bn",
                bn,
                "info",
                f"`{src}` has a bias that this BN layer subtracts again (a wasted parameter)",
                "build the Linear/Conv layer with bias=False",
            )
        )
    return out


def _stale_findings(model: nn.Module, batches: list[torch.Tensor]) -> list[Finding]:
    tracked = [(n, m) for n, m in _bn_modules(model) if m.track_running_stats]
    if not tracked:
        return []
    fresh = copy.deepcopy(model)
    precise_bn(fresh, batches)
    fresh_layers = dict(fresh.named_modules())
    out = []
    for name, m in tracked:
        ref = fresh_layers[name]
        sd = (ref.running_var.double() + m.eps).sqrt()
        shift = ((m.running_mean.double() - ref.running_mean.double()) / sd).pow(2).mean().sqrt()
        ratio = ((m.running_var.double() + m.eps) / (ref.running_var.double() + m.eps)).log()
        ratio = ratio.abs().mean().exp().item()  # geometric mean of the |log ratio|
        if shift.item() > STALE_MEAN or ratio > STALE_VAR:
            out.append(
                Finding(
                    "stale_stats",
                    name,
                    "warning",
                    f"running mean off by {shift.item():.3g} SD (RMS over channels), running "
                    f"variance off by a factor {ratio:.3g}, against Precise BN on "
                    f"{len(batches)} batch(es)",
                    "recompute the statistics with nbutils.precise_bn before evaluating",
                    shift.item(),
                )
            )
    return out


# --------------------------------------------------------------------------------------------


def _batches(loader: object, max_batches: int) -> list[torch.Tensor]:
    if isinstance(loader, torch.Tensor):
        raise TypeError(
            "loader must be an iterable of batches (e.g. a DataLoader), got a single tensor; "
            "pass [x] for one batch"
        )
    if isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
        raise TypeError(
            f"loader must be an iterable of batches (e.g. a DataLoader) or None, got "
            f"{type(loader).__name__}"
        )
    out = []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        out.append(_input_of(batch, i))
    if not out:
        raise ValueError("loader yielded no batch; diagnose needs at least one")
    return out


def diagnose(
    model: nn.Module,
    loader: Iterable | None = None,
    *,
    stage: str | None = None,
    max_batches: int = 8,
) -> Report:
    """Look for the normalization pitfalls of ``model``; returns a :class:`Report`.

    ``model``: any ``nn.Module``; it is not changed (probes run on deep copies).
    ``loader``: None, or an iterable of batches (tensors, or tuples whose first item is the input,
    as a ``DataLoader`` yields); its first batch is the probe, up to ``max_batches`` (an int >= 1)
    feed the Precise-BN comparison. Batches must be the size used in training for ``tiny_batch``
    to be meaningful. ``stage``: ``None``, ``"train"`` or ``"eval"`` (see the module docstring).

    Thresholds: momentum outside ``MOMENTUM_RANGE`` = (0.01, 0.2) is a warning, at or above 0.5 an
    error (Keras convention); fewer than ``TINY_SAMPLES`` = 8 samples or ``TINY_VALUES`` = 32
    values per channel in a BN batch is a warning; running statistics more than ``STALE_MEAN`` =
    0.5 SD (RMS over channels) or a variance factor ``STALE_VAR`` = 1.5 (geometric mean over
    channels) from Precise BN are a warning.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if stage not in _STAGES:
        raise ValueError(f"stage must be one of None, 'train', 'eval', got {stage!r}")
    if isinstance(max_batches, bool) or not isinstance(max_batches, int):
        raise TypeError(f"max_batches must be an int >= 1, got {max_batches!r}")
    if max_batches < 1:
        raise ValueError(f"max_batches must be an int >= 1, got {max_batches}")
    batches = None if loader is None else _batches(loader, max_batches)

    findings = _check_momentum(model, stage) + _check_no_running(model)
    findings += _check_frozen_affine(model, stage) + _check_train_mode(model, stage)
    checks = ["momentum", "no_running", "frozen_affine", "train_mode"]
    if batches is None:
        findings += _static_structure(model)
        checks += ["dropout_to_bn (module order)", "dropout_rank (module order)"]
    else:
        probe = _probe(model, batches[0])
        findings += _probe_findings(model, probe)
        if probe.failed is None:
            findings += _stale_findings(model, batches)
        checks += [c for c in CHECKS if c not in checks]
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: (order[f.severity], CHECKS.index(f.check)))
    return Report(findings, tuple(checks), type(model).__name__)
