"""Small model factories the chapters share: MLPs and CNNs with a choice of normalization.

The *order* of layers inside a block is fixed and documented here, because several chapters are
about exactly that order: each hidden block is ``Linear/Conv -> norm -> ReLU -> Dropout``.
Chapters that study a different placement build their model in the chapter, where it is taught.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

#: Normalizers understood by :func:`norm_layer`.
NORMS = ("none", "bn", "ln", "in", "gn")


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_widths(name: str, widths: object, item: str) -> None:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths:
        raise ValueError(f"{name} must be a non-empty sequence of widths, got {widths!r}")
    for width in widths:
        _check_positive_int(item, width)


def _check_p(p: object) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {p!r}")


def norm_layer(kind: str, num_features: int, *, spatial: bool, groups: int = 4) -> nn.Module:
    """A normalization layer for ``num_features`` features or channels.

    ``spatial=False``: input ``(N, C)`` (after a Linear layer); ``spatial=True``: ``(N, C, H, W)``.

    * ``"bn"``: ``BatchNorm1d`` / ``BatchNorm2d``;
    * ``"ln"``: ``LayerNorm(C)`` for ``(N, C)``; for images ``GroupNorm(1, C)``, which normalizes
      each sample over (C, H, W) like ``LayerNorm([C, H, W])`` but with a per-channel affine
      (so it does not need to know H and W);
    * ``"in"``: ``InstanceNorm2d(C, affine=True)`` (images only);
    * ``"gn"``: ``GroupNorm(groups, C)`` (``C`` must be divisible by ``groups``);
    * ``"none"``: ``Identity``.
    """
    _check_choice("norm", kind, NORMS)
    _check_positive_int("num_features", num_features)
    if kind == "none":
        return nn.Identity()
    if kind == "bn":
        return nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)
    if kind == "ln":
        return nn.GroupNorm(1, num_features) if spatial else nn.LayerNorm(num_features)
    if kind == "in":
        if not spatial:
            raise ValueError("norm='in' needs spatial inputs (N, C, H, W); use it in a CNN")
        return nn.InstanceNorm2d(num_features, affine=True)
    _check_positive_int("groups", groups)
    if num_features % groups:
        raise ValueError(f"groups must divide the number of channels {num_features}, got {groups}")
    return nn.GroupNorm(groups, num_features)


def make_mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    norm: str = "none",
    dropout: float = 0.0,
    groups: int = 4,
) -> nn.Sequential:
    """An MLP whose hidden blocks are ``Linear -> norm -> ReLU -> Dropout(dropout)``.

    Input ``(N, in_features)``, output ``(N, out_features)``. With a normalizer the hidden
    Linear layers have no bias (the normalizer's shift makes it redundant). Dropout layers are
    only added when ``dropout > 0``; there is none after the last hidden block's output layer.
    """
    _check_positive_int("in_features", in_features)
    _check_positive_int("out_features", out_features)
    _check_widths("hidden", hidden, "each hidden width")
    _check_choice("norm", norm, ("none", "bn", "ln", "gn"))
    _check_p(dropout)
    layers: list[nn.Module] = []
    width_in = in_features
    for width in hidden:
        layers.append(nn.Linear(width_in, width, bias=norm == "none"))
        if norm != "none":
            layers.append(norm_layer(norm, width, spatial=False, groups=groups))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width_in = width
    layers.append(nn.Linear(width_in, out_features))
    return nn.Sequential(*layers)


def make_cnn(
    in_channels: int = 1,
    channels: Sequence[int] = (16, 32),
    num_classes: int = 10,
    *,
    norm: str = "bn",
    groups: int = 4,
    dropout: float = 0.0,
) -> nn.Sequential:
    """A small CNN for 8x8 digits: per block ``Conv3x3 -> norm -> ReLU -> MaxPool2d(2)``.

    Input ``(N, in_channels, H, W)``; after the blocks a global average pool, optional
    ``Dropout(dropout)`` and a Linear layer give ``(N, num_classes)``. With ``H = W = 8`` and two
    blocks the last feature map is 2x2. Convolutions have no bias when a normalizer follows.
    """
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    _check_widths("channels", channels, "each channel width")
    _check_choice("norm", norm, NORMS)
    _check_p(dropout)
    layers: list[nn.Module] = []
    c_in = in_channels
    for c_out in channels:
        layers += [
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=norm == "none"),
            norm_layer(norm, c_out, spatial=True, groups=groups),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(c_in, num_classes))
    return nn.Sequential(*layers)
