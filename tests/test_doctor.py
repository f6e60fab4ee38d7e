"""Tests of nbutils.doctor: each pitfall found where it is, and no false alarm where it is not."""

import warnings

import pytest
import torch
from torch import nn

from nbutils.doctor import CHAPTERS, CHECKS, Report, diagnose


def batches(shape, n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for _ in range(n)]


def checks_of(report):
    return {f.check for f in report}


# --- clean models: ResNet-style, transformer-style (LN), GroupNorm ---------------------------


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, written out (torchvision is not needed)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """A torchvision-style ResNet: stem, two stages, global pooling, fc (with Dropout)."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


class TransformerBlock(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, dropout=0.1, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return x + self.drop(self.mlp(self.ln2(x)))


def gn_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        nn.Dropout2d(0.1),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
    )


def precise(model, data):
    from nbutils.recalibration import precise_bn

    precise_bn(model, data)
    return model


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (TinyResNet, (16, 3, 8, 8)),
        (lambda: nn.Sequential(TransformerBlock(), TransformerBlock()), (8, 5, 16)),
        (gn_net, (4, 3, 8, 8)),
    ],
)
@pytest.mark.parametrize("with_data", [False, True])
def test_no_false_alarm_on_clean_models(make, shape, with_data):
    model = make()
    data = batches(shape)
    if with_data and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        precise(model, data)  # statistics that fit the data
    model.eval()
    report = diagnose(model, data if with_data else None, stage="eval")
    assert len(report) == 0, str(report)
    assert "0 finding" in str(report)


def test_resnet_model_is_left_unchanged():
    model = TinyResNet().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    diagnose(model, batches((16, 3, 8, 8)))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


# --- each pitfall ----------------------------------------------------------------------------


class DropoutThroughForward(nn.Module):
    """Dropout -> functional relu -> Linear -> BN, the connection made in forward()."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, 6, bias=False)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x):
        return self.bn(self.fc(torch.relu(self.drop(x))))


def test_dropout_feeding_bn_traced_and_static():
    traced = diagnose(DropoutThroughForward().eval(), batches((16, 6)), stage="eval")
    found = traced.by_check("dropout_to_bn")
    assert [f.layer for f in found] == ["bn"] and "`drop`" in found[0].evidence
    seq = nn.Sequential(nn.Dropout(0.3), nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4))
    static = diagnose(seq.eval(), stage="eval")
    assert [f.layer for f in static.by_check("dropout_to_bn")] == ["2"]
    # Dropout after the last BN is the safe order: no finding, traced or static
    safe = nn.Sequential(nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4), nn.Dropout(0.3))
    assert not diagnose(safe.eval(), stage="eval").by_check("dropout_to_bn")
    assert not diagnose(safe.eval(), batches((16, 4)), stage="eval").by_check("dropout_to_bn")


def test_bn_after_dropout_then_bn_is_only_the_first():
    seq = nn.Sequential(
        nn.Dropout(0.3),
        nn.Linear(4, 4, bias=False),
        nn.BatchNorm1d(4),
        nn.Linear(4, 4, bias=False),
        nn.BatchNorm1d(4),
    )
    found = diagnose(seq.eval(), batches((16, 4)), stage="eval").by_check("dropout_to_bn")
    assert [f.layer for f in found] == ["2"]


@pytest.mark.parametrize(
    ("momentum", "severity"),
    [(0.9, "error"), (0.99, "error"), (0.001, "warning"), (None, "warning")],
)
def test_momentum(momentum, severity):
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4, momentum=momentum))
    found = diagnose(model.eval(), stage="eval").by_check("momentum")
    assert len(found) == 1 and found[0].severity == severity and found[0].layer == "1"
    if momentum == 0.9:
        assert "0.1" in found[0].advice
    for fine in (0.01, 0.1, 0.2):
        model[1].momentum = fine
        assert not diagnose(model, stage="eval").by_check("momentum")


def test_momentum_zero_matters_only_in_training():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4, momentum=0.0))
    assert not diagnose(model.eval(), stage="eval").by_check("momentum")
    found = diagnose(model.train(), stage="train").by_check("momentum")
    assert len(found) == 1 and found[0].value == 0


def test_dropout_rank():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout2d(0.5)).eval()
    static = diagnose(model, stage="eval").by_check("dropout_rank")
    assert len(static) == 1 and static[0].severity == "warning"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the 2-D input itself
        traced = diagnose(model, batches((8, 4)), stage="eval").by_check("dropout_rank")
    assert len(traced) == 1 and traced[0].severity == "warning" and traced[0].value == 2
    # Dropout1d on (N, features) takes the batch as one (C, L) sample: whole rows dropped
    rows = nn.Sequential(nn.Linear(4, 4), nn.Dropout1d(0.5))
    found = diagnose(rows, batches((8, 4)), stage="train").by_check("dropout_rank")
    assert [f.severity for f in found] == ["error"] and "whole rows" in found[0].evidence
    conv = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Dropout2d(0.5)).eval()
    assert not diagnose(conv, batches((8, 2, 5, 5)), stage="eval").by_check("dropout_rank")
    assert not diagnose(conv, stage="eval").by_check("dropout_rank")


def test_tiny_batches_and_batch_of_one():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4)).eval()
    found = diagnose(model, batches((4, 3)), stage="eval").by_check("tiny_batch")
    assert len(found) == 1 and found[0].value == 4 and found[0].severity == "warning"
    one = diagnose(model, batches((1, 3)), stage="eval").by_check("tiny_batch")
    assert len(one) == 1 and one[0].severity == "error"
    big = diagnose(precise(model, batches((64, 3))), batches((64, 3)), stage="eval")
    assert len(big) == 0, str(big)


def test_stale_statistics_against_precise_bn():
    data = [b * 3 + 2 for b in batches((64, 3))]
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4)).eval()
    stale = diagnose(model, data, stage="eval").by_check("stale_stats")  # fresh buffers: 0, 1
    assert {f.layer for f in stale} == {"1"} and stale[0].value > 0.5
    assert not diagnose(precise(model, data), data, stage="eval").by_check("stale_stats")


def test_track_running_stats_false():
    built = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4, track_running_stats=False))
    found = diagnose(built.eval(), stage="eval").by_check("no_running")
    assert len(found) == 1 and "depends on the other samples" in found[0].evidence
    later = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4)).eval()
    later[1].track_running_stats = False  # the attribute flipped after construction
    found = diagnose(later, stage="eval").by_check("no_running")
    assert len(found) == 1 and "after construction" in found[0].evidence


def test_frozen_affine_with_updating_statistics():
    from nbutils.domain_bn import frozen_bn

    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4)).train()
    for p in model[1].parameters():
        p.requires_grad_(False)
    found = diagnose(model, stage="train").by_check("frozen_affine")
    assert [f.layer for f in found] == ["1"]
    frozen_bn(model)  # eval mode for BN as well: the proper frozen BN
    assert not diagnose(model, stage="train").by_check("frozen_affine")


def test_train_mode_at_evaluation():
    model = TinyResNet().train()
    found = diagnose(model, stage="eval").by_check("train_mode")
    assert len(found) == 1 and found[0].severity == "error"
    assert found[0].value == sum(
        isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in model.modules()
    )
    assert diagnose(model).by_check("train_mode")[0].severity == "info"
    assert not diagnose(model, stage="train").by_check("train_mode")
    assert not diagnose(model.eval(), stage="eval").by_check("train_mode")


class TwoPersons(nn.Module):
    """One BN layer applied to two inputs of different distributions, as in a siamese net."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4, bias=False)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return torch.maximum(self.bn(self.fc(x[..., 0])), self.bn(self.fc(x[..., 1])))


def test_shared_bn_layer():
    data = [torch.stack([b, torch.zeros_like(b)], -1) for b in batches((32, 3))]
    found = diagnose(TwoPersons().eval(), data, stage="eval").by_check("shared_bn")
    assert len(found) == 1 and "2 times" in found[0].evidence and found[0].value > 0
    # the spread is the SD over the two calls of the batch means, mean over channels
    net = TwoPersons()
    found = diagnose(net.eval(), data, stage="eval").by_check("shared_bn")
    with torch.no_grad():
        h = net.fc(data[0][..., 0]).double()
    m, v = h.mean(0), h.var(0, correction=0)  # the second call sees zeros only
    want = (torch.stack([m, 0 * m]).std(0) / (v / 2).sqrt()).mean().item()
    assert found[0].value == pytest.approx(want, rel=1e-5)


def test_bias_before_bn():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)).eval()
    found = diagnose(model, batches((8, 2, 6, 6)), stage="eval").by_check("bias_before_bn")
    assert [f.layer for f in found] == ["1"] and found[0].severity == "info"


# --- the report and the arguments --------------------------------------------------------------


def test_report_renders_and_sorts():
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=0.9), nn.ReLU(), nn.Dropout2d(0.5)
    ).train()
    report = diagnose(model, stage="eval")
    assert isinstance(report, Report)
    assert [f.severity for f in report] == sorted(
        (f.severity for f in report), key=["error", "warning", "info"].index
    )
    text, md, page = str(report), report._repr_markdown_(), report._repr_html_()
    assert "momentum" in text and "06-bn-in-pytorch" in text
    assert md.count("\n|") == len(report) + 2 and "<table>" in page
    assert all(f.chapter == CHAPTERS[f.check] for f in report)
    assert len(report.errors) == 2  # Keras momentum, train mode at evaluation
    with pytest.raises(ValueError, match="check must be one of"):
        report.by_check("nope")
    assert set(CHECKS) == set(CHAPTERS)


def test_bad_arguments():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        diagnose("model")
    with pytest.raises(TypeError, match="single tensor"):
        diagnose(model, torch.zeros(4, 3))
    with pytest.raises(TypeError, match="iterable of batches"):
        diagnose(model, 3)
    with pytest.raises(ValueError, match="no batch"):
        diagnose(model, [])
    with pytest.raises(TypeError, match="tensor or a tuple"):
        diagnose(model, [[1, 2]])
    with pytest.raises(ValueError, match="stage must be one of"):
        diagnose(model, stage="test")
    with pytest.raises(ValueError, match="max_batches"):
        diagnose(model, stage=None, max_batches=0)
    with pytest.raises(TypeError, match="max_batches"):
        diagnose(model, max_batches=1.5)
