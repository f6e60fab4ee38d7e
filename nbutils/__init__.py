"""Helpers shared by the chapters of *Regularization and Normalization, Executed*.

Every chapter starts with ``nbutils.setup()``. Code that a chapter teaches is written out in that
chapter; what lives here is what several chapters *use*, and it is unit-tested in ``tests/``.
"""

from nbutils import stats
from nbutils.data import (
    Digits,
    digits_loaders,
    load_digits_tensors,
    make_loader,
    make_toy_regression,
    stratified_split,
)
from nbutils.display import figure_html, fmt_err, glue, round_sig, show_source
from nbutils.doctor import Report, diagnose
from nbutils.hooks import InputStats, record_inputs
from nbutils.models import NORMS, make_cnn, make_mlp, norm_layer
from nbutils.monitor import TrainingMonitor, plot_monitor
from nbutils.param_groups import decay_groups
from nbutils.plotting import COLORS, apply_style, color
from nbutils.recalibration import precise_bn, recalibrate_bn
from nbutils.reproducibility import seed_everything, setup
from nbutils.stacking import StackedModels, stacked_loss
from nbutils.training import evaluate, train

__all__ = [
    "COLORS",
    "NORMS",
    "Digits",
    "InputStats",
    "Report",
    "StackedModels",
    "TrainingMonitor",
    "apply_style",
    "color",
    "decay_groups",
    "diagnose",
    "digits_loaders",
    "evaluate",
    "figure_html",
    "fmt_err",
    "glue",
    "load_digits_tensors",
    "make_cnn",
    "make_loader",
    "make_mlp",
    "make_toy_regression",
    "norm_layer",
    "plot_monitor",
    "precise_bn",
    "recalibrate_bn",
    "record_inputs",
    "round_sig",
    "seed_everything",
    "setup",
    "show_source",
    "stacked_loss",
    "stats",
    "stratified_split",
    "train",
]
__version__ = "0.1.0"
