"""nbutils.models (MLP/CNN factories) and nbutils.hooks (input statistics)."""

import pytest
import torch
from torch import nn

import nbutils


@pytest.mark.parametrize("norm", ["none", "bn", "ln", "gn"])
def test_mlp_blocks_in_documented_order(norm):
    model = nbutils.make_mlp(64, [32, 16], 10, norm=norm, dropout=0.2)
    kinds = [type(m).__name__ for m in model]
    norm_name = {"none": None, "bn": "BatchNorm1d", "ln": "LayerNorm", "gn": "GroupNorm"}[norm]
    block = ["Linear"] + ([norm_name] if norm_name else []) + ["ReLU", "Dropout"]
    assert kinds == block * 2 + ["Linear"]
    assert (model[0].bias is None) == (norm != "none")
    model.eval()
    assert model(torch.randn(5, 64)).shape == (5, 10)


@pytest.mark.parametrize("norm", list(nbutils.NORMS))
def test_cnn_shapes_and_norm_types(norm):
    torch.manual_seed(0)
    model = nbutils.make_cnn(1, (8, 16), 10, norm=norm, groups=4, dropout=0.1)
    out = model(torch.randn(6, 1, 8, 8))
    assert out.shape == (6, 10)
    expected = {
        "none": nn.Identity,
        "bn": nn.BatchNorm2d,
        "ln": nn.GroupNorm,
        "in": nn.InstanceNorm2d,
        "gn": nn.GroupNorm,
    }[norm]
    assert isinstance(model[1], expected)
    if norm == "ln":
        assert model[1].num_groups == 1
    if norm == "gn":
        assert model[1].num_groups == 4


def test_cnn_ln_is_layernorm_over_chw():
    # GroupNorm(1, C) normalizes each sample over (C, H, W), like LayerNorm([C, H, W]).
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    gn1 = nbutils.norm_layer("ln", 8, spatial=True).double()
    ln = nn.LayerNorm([8, 5, 5], elementwise_affine=False).double()
    assert torch.allclose(gn1(x), ln(x), atol=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nbutils.norm_layer("batch", 4, spatial=False), "norm must be one of none, bn"),
        (lambda: nbutils.norm_layer("in", 4, spatial=False), "norm='in' needs spatial inputs"),
        (lambda: nbutils.norm_layer("gn", 6, spatial=True, groups=4), "groups must divide"),
        (lambda: nbutils.norm_layer("bn", 0, spatial=True), "num_features must be an int >= 1"),
        (lambda: nbutils.make_mlp(4, [], 2), "hidden must be a non-empty sequence"),
        (lambda: nbutils.make_mlp(4, [8], 2, norm="in"), "norm must be one of none, bn, ln, gn"),
        (
            lambda: nbutils.make_mlp(4, [8], 2, dropout=1.0),
            r"dropout must be a probability in \[0, 1\)",
        ),
        (lambda: nbutils.make_mlp(4, [8, 0], 2), "each hidden width must be an int >= 1"),
        (lambda: nbutils.make_cnn(channels=()), "channels must be a non-empty sequence"),
        (lambda: nbutils.make_cnn(num_classes=0), "num_classes must be an int >= 1"),
    ],
)
def test_factory_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_record_inputs_pools_exactly_over_uneven_batches():
    torch.manual_seed(0)
    model = nbutils.make_mlp(3, [6], 2, norm="bn")
    data = torch.randn(50, 3) * torch.tensor([1.0, 5.0, 0.1]) + 2.0
    with nbutils.record_inputs(model, nn.BatchNorm1d) as stats:
        for chunk in data.split(15):  # 15 + 15 + 15 + 5
            model(chunk)
    assert list(stats) == ["1"]
    record = stats["1"]
    full = model[0](data).detach().double()
    assert record.count == 50
    assert torch.allclose(record.mean, full.mean(0), atol=1e-12)
    assert torch.allclose(record.var, full.var(0, correction=0), atol=1e-10)
    assert len(record.batch_means) == 4
    assert torch.allclose(record.batch_vars[3], full[45:].var(0, correction=0), atol=1e-12)
    # the hooks are gone after the block
    model(data)
    assert record.count == 50


def test_record_inputs_conv_channels():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    model = nn.Sequential(nn.BatchNorm2d(3).double())
    with nbutils.record_inputs(model) as stats:
        model(x)
    expected = x.transpose(0, 1).flatten(1).var(1, correction=0)
    assert torch.allclose(stats["0"].var, expected, atol=1e-12)
    assert torch.allclose(stats["0"].std, expected.sqrt(), atol=1e-12)


def test_record_inputs_errors():
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        with nbutils.record_inputs("model"):
            pass
    with pytest.raises(ValueError, match="model has no submodule of type BatchNorm1d"):
        with nbutils.record_inputs(nn.Linear(2, 2), nn.BatchNorm1d):
            pass
    with pytest.raises(TypeError, match=r"types must be an nn\.Module subclass"):
        with nbutils.record_inputs(nn.Linear(2, 2), int):
            pass
    with pytest.raises(ValueError, match="no input was recorded"):
        _ = nbutils.InputStats().mean
    with pytest.raises(ValueError, match="inputs must have a channel dimension"):
        nbutils.InputStats().update(torch.zeros(3))
