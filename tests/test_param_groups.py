"""Tests of nbutils.param_groups: which parameters get weight decay."""

import pytest
import torch
from torch import nn

from nbutils.models import make_cnn, make_mlp
from nbutils.param_groups import NORM_TYPES, decay_groups, decay_split
from nbutils.stacking import StackedModels


def bn_mlp() -> nn.Sequential:
    return make_mlp(8, [6, 5], 3, norm="bn")


def test_default_split_of_a_bn_mlp():
    decay, no_decay = decay_split(bn_mlp())
    assert decay == ["0.weight", "3.weight", "6.weight"]
    assert no_decay == ["1.weight", "1.bias", "4.weight", "4.bias", "6.bias"]


def test_exclude_bias_only_decays_norm_gains():
    decay, no_decay = decay_split(bn_mlp(), exclude=("bias",))
    assert "1.weight" in decay and "4.weight" in decay
    assert no_decay == ["1.bias", "4.bias", "6.bias"]


def test_empty_exclude_decays_everything():
    model = bn_mlp()
    decay, no_decay = decay_split(model, exclude=())
    assert decay == [n for n, _ in model.named_parameters()] and no_decay == []
    groups = decay_groups(model, 0.1, exclude=[])
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize(
    "norm_layer",
    [
        nn.BatchNorm2d(4),
        nn.GroupNorm(2, 4),
        nn.LayerNorm(4),
        nn.InstanceNorm1d(4, affine=True),
    ],
)
def test_every_normalizer_is_recognized(norm_layer):
    model = nn.Sequential(nn.Linear(4, 4, bias=False), norm_layer)
    decay, no_decay = decay_split(model, exclude=("norm",))
    assert decay == ["0.weight"]
    assert no_decay == [f"1.{n}" for n, _ in norm_layer.named_parameters()]


def test_rmsnorm_is_a_norm_type():
    if hasattr(nn, "RMSNorm"):
        assert nn.RMSNorm in NORM_TYPES
        model = nn.Sequential(nn.Linear(4, 4), nn.RMSNorm(4))
        assert decay_split(model)[1] == ["0.bias", "1.weight"]


def test_module_types_can_be_excluded():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    decay, no_decay = decay_split(model, exclude=(nn.Embedding, "bias"))
    assert decay == ["1.weight"] and no_decay == ["0.weight", "1.bias"]


def test_shared_parameter_appears_once_and_is_excluded_if_any_owner_is():
    norm = nn.LayerNorm(4)
    lin = nn.Linear(4, 4)
    lin.weight = norm.weight  # shape (4,) would not fit a Linear; only names matter here
    model = nn.Sequential(norm, lin)
    decay, no_decay = decay_split(model)
    names = decay + no_decay
    assert len(names) == len(set(names)) == 3
    assert "0.weight" in no_decay


def test_groups_hold_the_model_tensors_and_train():
    torch.manual_seed(0)
    model = make_cnn(1, (4, 8), 10, norm="bn")
    groups = decay_groups(model, 0.5)
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}
    opt = torch.optim.SGD(groups, lr=0.1)
    gamma = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).weight
    before = gamma.detach().clone()
    opt.zero_grad()
    model(torch.randn(4, 1, 8, 8)).pow(2).mean().mul(0).backward()  # zero loss gradient
    opt.step()
    assert torch.equal(gamma, before)  # no decay on BN's gain
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv_before = conv.weight.detach().clone()
    opt.step()  # the gradient is zero: only the decay acts, w <- (1 - lr * wd) w
    assert torch.allclose(conv.weight, 0.95 * conv_before, rtol=1e-6, atol=0)


def test_decay_matches_manual_groups_step_for_step():
    torch.manual_seed(1)
    a, b = bn_mlp(), bn_mlp()
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    opt_a = torch.optim.SGD(decay_groups(a, 0.2), lr=0.1, momentum=0.9)
    decay, _ = decay_split(b)
    named = dict(b.named_parameters())
    manual = [
        {"params": [p for n, p in named.items() if n in decay], "weight_decay": 0.2},
        {"params": [p for n, p in named.items() if n not in decay], "weight_decay": 0.0},
    ]
    opt_b = torch.optim.SGD(manual, lr=0.1, momentum=0.9)
    for model, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_params_mapping_for_stacked_models():
    models = [bn_mlp() for _ in range(3)]
    stack = StackedModels(models)
    groups = decay_groups(models[0], 1e-3, params=stack.named_parameters())
    stacked = stack.named_parameters()
    assert [p.shape[0] for g in groups for p in g["params"]] == [3] * len(stacked)
    assert groups[0]["params"][0] is stacked["0.weight"]
    assert groups[1]["params"][0] is stacked["1.weight"]


def test_bad_model():
    with pytest.raises(TypeError, match=r"model must be an nn.Module, got list"):
        decay_split([nn.Linear(2, 2)])
    with pytest.raises(TypeError, match=r"model must be an nn.Module"):
        decay_groups("net", 0.1)


def test_model_without_parameters():
    with pytest.raises(ValueError, match="model has no parameters"):
        decay_groups(nn.ReLU(), 0.1)


@pytest.mark.parametrize("wd", [True, "0.1", None, [0.1]])
def test_weight_decay_type(wd):
    with pytest.raises(TypeError, match="weight_decay must be a real number >= 0"):
        decay_groups(bn_mlp(), wd)


@pytest.mark.parametrize("wd", [-0.1, float("nan"), float("inf")])
def test_weight_decay_value(wd):
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        decay_groups(bn_mlp(), wd)


def test_exclude_must_be_a_sequence():
    with pytest.raises(TypeError, match=r'exclude must be a tuple or list.*\("bias",\)'):
        decay_split(bn_mlp(), exclude="bias")
    with pytest.raises(TypeError, match="exclude must be a tuple or list"):
        decay_split(bn_mlp(), exclude={"bias"})


def test_exclude_items():
    with pytest.raises(ValueError, match=r"exclude\[1\] must be .*got 'biases'"):
        decay_split(bn_mlp(), exclude=("norm", "biases"))
    with pytest.raises(TypeError, match=r"exclude\[0\] must be .*got 3"):
        decay_split(bn_mlp(), exclude=(3,))
    with pytest.raises(TypeError, match=r"exclude\[0\] must be .*nn.Module subclass"):
        decay_split(bn_mlp(), exclude=(int,))
    with pytest.raises(TypeError, match=r"exclude\[0\]"):
        decay_groups(bn_mlp(), 0.1, exclude=(nn.Linear(2, 2),))  # an instance, not a class


def test_bad_params_mapping():
    model = bn_mlp()
    with pytest.raises(TypeError, match="params must be a mapping"):
        decay_groups(model, 0.1, params=list(model.parameters()))
    partial = dict(model.named_parameters())
    partial.pop("6.bias")
    partial["extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['6.bias'\], unexpected \['extra'\]"):
        decay_groups(model, 0.1, params=partial)
    wrong = dict(model.named_parameters())
    wrong["0.weight"] = [1.0]
    with pytest.raises(TypeError, match=r"params\['0.weight'\] must be a torch.Tensor"):
        decay_groups(model, 0.1, params=wrong)
