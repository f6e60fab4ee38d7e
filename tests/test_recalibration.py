"""nbutils.recalibration.recalibrate_bn against independent, hand-written computations."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbutils.recalibration import recalibrate_bn

EPS = 1e-5  # BatchNorm's default eps, used by the manual computation below


def dropout_mlp(seed: int = 0) -> nn.Sequential:
    # Linear -> Dropout -> BN -> ReLU -> Linear -> Dropout -> BN -> ReLU -> Linear, float64.
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 6),
        nn.Dropout(0.5),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 4),
        nn.Dropout(0.5),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Linear(4, 3),
    ).double()
    with torch.no_grad():  # non-trivial affine parameters, so a wrong formula cannot hide
        for bn in (model[2], model[6]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return model


def data(n: int = 97, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 2.0 + 3.0 * torch.randn(n, 5, generator=gen, dtype=torch.float64)  # non-zero mean


def uneven(x: torch.Tensor, sizes=(7, 13, 50, 27)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    assert sum(sizes) == len(x)
    return [(chunk, torch.zeros(len(chunk))) for chunk in torch.split(x, list(sizes))]


def pooled(values: list[torch.Tensor], unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # Exact mean and variance per column over all rows of all chunks.
    allv = torch.cat(values)
    return allv.mean(dim=0), allv.var(dim=0, correction=1 if unbiased else 0)


def manual_two_layer(model: nn.Sequential, chunks: list[torch.Tensor]):
    # The inputs of both BN layers when only the BN layers are in train mode: Dropout is the
    # identity, the first BN normalizes each chunk with that chunk's own (biased) statistics.
    first, second = [], []
    for x in chunks:
        h = x @ model[0].weight.T + model[0].bias
        first.append(h)
        mu, var = h.mean(dim=0), h.var(dim=0, correction=0)
        z = (h - mu) / torch.sqrt(var + EPS) * model[2].weight + model[2].bias
        second.append(torch.clamp(z, min=0) @ model[4].weight.T + model[4].bias)
    return first, second


@pytest.mark.parametrize("unbiased", [True, False])
def test_single_bn_layer_matches_exact_statistics_over_uneven_batches(unbiased):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.5), nn.BatchNorm1d(6)).double()
    x = data()
    batches = uneven(x)
    out = recalibrate_bn(model, batches, unbiased=unbiased)
    assert out is model
    with torch.no_grad():
        h = x @ model[0].weight.T + model[0].bias  # the dataset through Linear, no Dropout
    mean, var = pooled([h], unbiased)
    assert torch.allclose(model[2].running_mean, mean, rtol=0, atol=1e-12)
    assert torch.allclose(model[2].running_var, var, rtol=1e-12, atol=0)
    assert int(model[2].num_batches_tracked) == len(batches)


def test_pooled_variance_is_not_the_mean_of_batch_variances():
    # The chunks have very different means: averaging per-batch variances (what update_bn does
    # with momentum=None) misses the between-batch part that the pooled variance contains.
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(2)).double()
    chunks = [torch.randn(20, 2, dtype=torch.float64) + shift for shift in (-5.0, 0.0, 5.0)]
    recalibrate_bn(model, chunks)
    _, var = pooled(chunks, unbiased=True)
    mean_of_batch_vars = torch.stack([c.var(dim=0) for c in chunks]).mean(dim=0)
    assert torch.allclose(model[0].running_var, var, rtol=1e-12, atol=0)
    assert (model[0].running_var > 5 * mean_of_batch_vars).all()


def test_two_bn_layers_match_a_manual_pass():
    model = dropout_mlp()
    x = data()
    chunks = list(torch.split(x, [40, 40, 17]))
    recalibrate_bn(model, chunks)
    with torch.no_grad():
        first, second = manual_two_layer(model, chunks)
    for bn, values in ((model[2], first), (model[6], second)):
        mean, var = pooled(values, unbiased=True)
        assert torch.allclose(bn.running_mean, mean, rtol=0, atol=1e-10)
        assert torch.allclose(bn.running_var, var, rtol=1e-10, atol=0)


def test_batchnorm2d_pools_over_samples_and_positions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Dropout(0.3), nn.BatchNorm2d(3))
    model = model.double()
    x = torch.randn(23, 2, 6, 6, dtype=torch.float64) + 1.0
    recalibrate_bn(model, torch.split(x, [10, 10, 3]), unbiased=False)
    with torch.no_grad():
        h = F.conv2d(x, model[0].weight, model[0].bias, padding=1)
    per_channel = h.transpose(0, 1).reshape(3, -1)  # (C, N * H * W)
    assert torch.allclose(model[2].running_mean, per_channel.mean(dim=1), atol=1e-12, rtol=0)
    expected = per_channel.var(dim=1, correction=0)
    assert torch.allclose(model[2].running_var, expected, rtol=1e-12, atol=0)


def test_dropout_stays_off_and_result_is_deterministic():
    model = dropout_mlp()
    seen = []
    for layer in (model[1], model[5]):
        layer.register_forward_pre_hook(lambda m, _args: seen.append(m.training))
    x = data()
    recalibrate_bn(model, [x[:50], x[50:]])
    first = (model[6].running_mean.clone(), model[6].running_var.clone())
    recalibrate_bn(model, [x[:50], x[50:]])
    assert seen and not any(seen), "Dropout must be in eval mode during recalibration"
    assert torch.equal(model[6].running_mean, first[0])
    assert torch.equal(model[6].running_var, first[1])


def test_only_batchnorm_is_in_train_mode_and_no_graph_is_built():
    model = dropout_mlp()
    during = {}

    def probe(module, args):
        during[module] = (module.training, torch.is_grad_enabled())

    for module in model:
        module.register_forward_pre_hook(probe)
    recalibrate_bn(model, [data()])
    for module, (training, grad_enabled) in during.items():
        assert training == isinstance(module, nn.BatchNorm1d), type(module).__name__
        assert not grad_enabled
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("setup", ["train", "eval", "mixed"])
def test_every_module_mode_is_restored(setup):
    model = dropout_mlp()
    model.train(setup == "train")
    if setup == "mixed":
        model.train()
        model[1].eval()
        model[6].eval()
    before = [m.training for m in model.modules()]
    weights = [p.detach().clone() for p in model.parameters()]
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    recalibrate_bn(model, [data()])
    assert [m.training for m in model.modules()] == before
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == momenta


@pytest.mark.parametrize(("max_batches", "used"), [(1, 1), (2, 2), (10, 4), (None, 4)])
def test_max_batches_uses_only_the_first_batches(max_batches, used):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6)).double()
    x = data()
    batches = uneven(x)
    recalibrate_bn(model, batches, max_batches=max_batches)
    with torch.no_grad():
        h = [b @ model[0].weight.T + model[0].bias for b, _ in batches[:used]]
    mean, var = pooled(h, unbiased=True)
    assert torch.allclose(model[1].running_mean, mean, rtol=0, atol=1e-12)
    assert torch.allclose(model[1].running_var, var, rtol=1e-12, atol=0)
    assert int(model[1].num_batches_tracked) == used


def test_accepts_a_dataloader_and_a_generator():
    from nbutils import make_loader

    model_a, model_b = dropout_mlp(), dropout_mlp()
    x = data()
    recalibrate_bn(model_a, make_loader(x, torch.zeros(len(x)), batch_size=30))
    recalibrate_bn(model_b, (chunk for chunk in torch.split(x, 30)))
    assert torch.equal(model_a[6].running_var, model_b[6].running_var)


def test_layers_without_running_statistics_are_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.BatchNorm1d(6)
    ).double()
    recalibrate_bn(model, [data()])
    assert model[1].running_mean is None and model[1].training
    assert int(model[2].num_batches_tracked) == 1


@pytest.mark.parametrize(
    ("model", "batches", "kwargs", "error", "message"),
    [
        ("not a model", [torch.zeros(4, 5)], {}, TypeError, "model must be an nn.Module"),
        (nn.Linear(5, 2), [torch.zeros(4, 5)], {}, ValueError, "no BatchNorm layer"),
        (
            nn.Sequential(nn.BatchNorm1d(5, track_running_stats=False)),
            [torch.zeros(4, 5)],
            {},
            ValueError,
            "no BatchNorm layer",
        ),
        (None, [], {}, ValueError, "at least one batch"),
        (None, torch.zeros(4, 5), {}, TypeError, "got a single tensor"),
        (None, 5, {}, TypeError, "batches must be an iterable"),
        (None, ["text"], {}, TypeError, "batch 0 must be a tensor"),
        (
            None,
            [torch.zeros(4, 5, dtype=torch.float64), {"x": 1}],
            {},
            TypeError,
            "batch 1 must be a tensor",
        ),
        (None, [()], {}, TypeError, "batch 0 must be a tensor"),
        (None, [torch.zeros(4, 5)], {"max_batches": 0}, ValueError, "max_batches must be"),
        (None, [torch.zeros(4, 5)], {"max_batches": -2}, ValueError, "max_batches must be"),
        (None, [torch.zeros(4, 5)], {"max_batches": 1.5}, ValueError, "got 1.5"),
        (None, [torch.zeros(4, 5)], {"max_batches": True}, ValueError, "got True"),
        (None, [torch.zeros(4, 5)], {"unbiased": 1}, TypeError, "unbiased must be True"),
    ],
)
def test_errors_name_the_argument_and_leave_the_model_unchanged(
    model, batches, kwargs, error, message
):
    if model is None:
        model = dropout_mlp()
        with torch.no_grad():
            for bn in (model[2], model[6]):
                bn.running_mean.fill_(0.25)
                bn.running_var.fill_(4.0)
                bn.num_batches_tracked.fill_(7)
    modes = [m.training for m in model.modules()] if isinstance(model, nn.Module) else None
    buffers = [b.clone() for b in model.buffers()] if isinstance(model, nn.Module) else None
    with pytest.raises(error, match=message):
        recalibrate_bn(model, batches, **kwargs)
    if modes is not None:
        assert [m.training for m in model.modules()] == modes
        assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


def test_error_in_a_later_batch_restores_statistics_and_modes():
    model = dropout_mlp()
    model.train()
    before = [b.clone() for b in model.buffers()]
    with pytest.raises(RuntimeError):  # wrong feature count in the second batch
        recalibrate_bn(model, [data(), torch.zeros(8, 3, dtype=torch.float64)])
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
    assert all(m.training for m in model.modules())


def test_one_full_batch_makes_eval_mode_inputs_match_the_stored_statistics_in_every_layer():
    # With the whole data set as one batch and unbiased=False, the calibration pass normalizes
    # every layer exactly as eval mode will afterwards (batch statistics = stored ones), so the
    # eval-mode input of every BN layer, computed by an independent forward pass, has exactly
    # the stored mean and (biased) variance: deeper layers included, Dropout off.
    model = dropout_mlp()
    x = data(200)
    recalibrate_bn(model, [x], unbiased=False)
    seen = {}
    for index in (2, 6):
        model[index].register_forward_hook(
            lambda _m, args, _out, i=index: seen.__setitem__(i, args[0].detach())
        )
    model.eval()
    with torch.no_grad():
        model(x)
    for index in (2, 6):
        bn, h = model[index], seen[index]
        assert torch.allclose(h.mean(dim=0), bn.running_mean, rtol=0, atol=1e-10)
        assert torch.allclose(h.var(dim=0, correction=0), bn.running_var, rtol=1e-10, atol=0)


def test_precise_bn_and_recalibrate_bn_are_one_function():
    from nbutils.recalibration import precise_bn

    assert precise_bn is recalibrate_bn


def test_bn_layers_finds_every_layer_with_running_statistics_in_order():
    from nbutils.recalibration import bn_layers

    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.BatchNorm2d(2),
        nn.Sequential(nn.BatchNorm2d(2, track_running_stats=False), nn.BatchNorm2d(2)),
        nn.Flatten(),
        nn.LazyLinear(3),
        nn.BatchNorm1d(3),
    )
    assert list(bn_layers(model)) == ["1", "2.1", "5"]
    with pytest.raises(TypeError, match=r"model must be an nn\.Module, got str"):
        bn_layers("model")
    with pytest.raises(ValueError, match="no BatchNorm layer with running statistics"):
        bn_layers(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))


def test_pool_batch_moments_equals_the_statistics_of_all_values():
    from nbutils.recalibration import pool_batch_moments

    gen = torch.Generator().manual_seed(3)
    chunks = [
        shift + scale * torch.randn(n, 4, generator=gen, dtype=torch.float64)
        for n, shift, scale in ((3, -2.0, 0.5), (40, 1.0, 2.0), (1, 7.0, 1.0), (11, 0.0, 3.0))
    ]
    counts = [len(c) for c in chunks]
    means = torch.stack([c.mean(0) for c in chunks])
    variances = torch.stack([c.var(0, correction=0) for c in chunks])
    mean, var = pool_batch_moments(counts, means, variances)
    allv = torch.cat(chunks)
    assert torch.allclose(mean, allv.mean(0), rtol=0, atol=1e-12)
    assert torch.allclose(var, allv.var(0, correction=0), rtol=1e-12, atol=0)
    # equal weights (the mean of the batch statistics) would be far off here
    assert not torch.allclose(means.mean(0), allv.mean(0), atol=0.1)
    # counts as a tensor, float32 moments: the result is float64 all the same
    mean32, _ = pool_batch_moments(torch.tensor(counts), means.float(), variances.float())
    assert mean32.dtype == torch.float64


@pytest.mark.parametrize(
    ("counts", "means", "variances", "error", "message"),
    [
        ([2, 3], [[0.0], [1.0]], torch.ones(2, 1), TypeError, "means and variances must be"),
        ([2.0, 3.0], torch.zeros(2, 1), torch.ones(2, 1), TypeError, "counts must be a 1-D"),
        ([[2, 3]], torch.zeros(2, 1), torch.ones(2, 1), TypeError, "counts must be a 1-D"),
        ([], torch.zeros(0, 1), torch.ones(0, 1), ValueError, "at least one batch"),
        ([2, 0], torch.zeros(2, 1), torch.ones(2, 1), ValueError, r"each >= 1, got \[2, 0\]"),
        ([2, 3], torch.zeros(3, 1), torch.ones(3, 1), ValueError, "with B = 2 batches"),
        ([2, 3], torch.zeros(2, 1), torch.ones(2, 2), ValueError, "must both have shape"),
        ([2, 3], torch.zeros(2), torch.ones(2), ValueError, "must both have shape"),
        ([2, 3], torch.zeros(2, 1), -torch.ones(2, 1), ValueError, "variances must be >= 0"),
    ],
)
def test_pool_batch_moments_rejects_bad_input(counts, means, variances, error, message):
    from nbutils.recalibration import pool_batch_moments

    with pytest.raises(error, match=message):
        pool_batch_moments(counts, means, variances)


def test_a_layer_that_receives_no_input_is_an_error_and_changes_nothing():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.BatchNorm1d(3), nn.BatchNorm1d(3)

        def forward(self, x):
            return self.used(x)

    model = Skips()
    before = [b.clone() for b in model.buffers()]
    with pytest.raises(ValueError, match=r"layers \['unused'\] received no input"):
        recalibrate_bn(model, [torch.randn(5, 3)])
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))


def test_streaming_consumes_one_batch_at_a_time():
    # A generator that checks the previous batch was already run through the model: the
    # loader is consumed lazily, never materialized.
    model = nn.Sequential(nn.BatchNorm1d(2)).double()
    calls = []
    model[0].register_forward_pre_hook(lambda _m, _a: calls.append(1))

    def batches():
        for k in range(4):
            assert len(calls) == k
            yield torch.randn(6, 2, dtype=torch.float64)

    recalibrate_bn(model, batches())
    assert len(calls) == 4 and int(model[0].num_batches_tracked) == 4
