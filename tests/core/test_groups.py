"""Sample groups (samples_per_pass) give the result of one pass over all k samples."""

import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import memory_plan
from modmask.core import training
from modmask.core.gumbel import UniformSource
from modmask.models import MLP, EncoderLayer, RepeatLSTMClassifier

from test_training import make_trainer


def _models():
    return {
        "mlp": (lambda: MLP(6, [16, 16], 3), torch.randn(8, 6), "vmap"),
        "attention": (lambda: nn.Sequential(EncoderLayer(8, 2, 16), nn.Flatten(), nn.Linear(8 * 4, 3)),
                      torch.randn(8, 4, 8), "vmap"),
        "lstm": (lambda: RepeatLSTMClassifier(6, 3, hidden_size=8), torch.randn(8, 6), "sequential"),
    }


def _train(make, x, y, path, steps=4, **options):
    torch.manual_seed(0)
    model = make().eval()
    trainer = make_trainer(model, F.cross_entropy, (x, y), k=4, seed=5, path=path, lr=0.1, **options)
    losses = [trainer.step([(x, y)])[0]["loss"] for _ in range(steps)]
    assert trainer.path == path
    return trainer, torch.stack(losses)


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("group", [1, 2])
def test_groups_equal_one_pass_over_all_samples(name, group):
    make, x, path = _models()[name]
    y = torch.randint(0, 3, (8,))
    full, full_losses = _train(make, x, y, path)
    grouped, grouped_losses = _train(make, x, y, path, samples_per_pass=group)
    assert grouped.samples_per_pass == group
    assert torch.allclose(full_losses, grouped_losses, atol=1e-6)
    for n in full.logits:
        assert torch.allclose(full.logits[n], grouped.logits[n], atol=1e-5), n
        assert not torch.equal(full.logits[n], torch.full_like(full.logits[n], 2.0)), n  # they did train


def test_groups_with_original_clipping_and_trainable_weights():
    make, x, _ = _models()["mlp"]
    y = torch.randint(0, 3, (8,))
    for options in ({"original_clipping": True},
                    {"trainable": {"layers.0.weight": torch.rand(16, 6) > 0.5}}):
        full, _ = _train(make, x, y, "vmap", **options)
        grouped, _ = _train(make, x, y, "vmap", samples_per_pass=1, **options)
        for n in full.weights:
            assert torch.allclose(full.weights[n], grouped.weights[n], atol=1e-5), (options, n)
            if full.weights[n].grad is not None:
                assert torch.allclose(full.weights[n].grad, grouped.weights[n].grad, atol=1e-5), (options, n)
        for n in full.logits:
            assert torch.allclose(full.logits[n], grouped.logits[n], atol=1e-5), (options, n)


def test_samples_per_pass_must_divide_k_and_targets_need_a_batch_dim():
    model = MLP(6, [8], 3)
    for bad in (0, 2.0, "half"):
        with pytest.raises(ValueError, match=r"execution settings: samples_per_pass must be a positive divisor"):
            make_trainer(model, F.cross_entropy, k=4, samples_per_pass=bad)
    for bad in (3, 5, 8):
        with pytest.raises(ValueError, match=r"samples_per_pass must divide k=4 \(one of \[1, 2, 4\]\)"):
            make_trainer(model, F.cross_entropy, k=4, samples_per_pass=bad)
    batch = (torch.randn(8, 6), (torch.randint(0, 3, (8,)), torch.tensor(1.0)))
    trainer = make_trainer(model, lambda out, t: F.cross_entropy(out, t[0]), batch, k=4, samples_per_pass=2)
    with pytest.raises(ValueError, match="targets are split along dim 0"):
        trainer.step([batch])


def test_auto_and_the_plan_is_logged_once_before_the_first_step(caplog):
    model = MLP(6, [8], 3)
    batch = (torch.randn(8, 6), torch.randint(0, 3, (8,)))
    with caplog.at_level(logging.INFO, logger="modmask"):
        trainer = make_trainer(model, F.cross_entropy, batch, k=4, samples_per_pass="auto")
        trainer.step([batch])
        trainer.step([batch])
    lines = [r.getMessage() for r in caplog.records if "memory plan" in r.getMessage()]
    assert len(lines) == 1 and "samples_per_pass=4" in lines[0]  # a tiny model fits: all samples at once
    assert trainer.samples_per_pass == 4 and trainer.plan.samples_per_pass == 4


def test_auto_takes_fewer_samples_per_pass_where_free_memory_is_small(monkeypatch):
    model = MLP(6, [512, 512], 3)
    batch = (torch.randn(16, 6), torch.randint(0, 3, (16,)))
    plan = memory_plan(model, k=4, batch=batch)
    room = int(plan.with_settings(samples_per_pass=2).needed / 0.85)  # only 2 samples per pass fit
    assert plan.needed > 0.9 * room
    monkeypatch.setattr(training, "free_memory", lambda device: room)
    auto = make_trainer(model, F.cross_entropy, batch, k=4, samples_per_pass="auto", seed=1)
    assert auto.samples_per_pass == 2 and auto.plan.samples_per_pass == 2
    assert auto.plan.total == plan.with_settings(samples_per_pass=2).total  # the plan memory_plan makes
    two = make_trainer(model, F.cross_entropy, batch, k=4, samples_per_pass=2, seed=1)
    for trainer in (auto, two):
        trainer.step([batch])
    assert all(torch.equal(auto.logits[n], two.logits[n]) for n in auto.logits)
    monkeypatch.setattr(training, "free_memory", lambda device: 1)  # nothing fits: one sample at a time
    assert make_trainer(model, F.cross_entropy, batch, k=4, samples_per_pass="auto").samples_per_pass == 1


def test_memory_plan_parts_follow_the_formula():
    model = MLP(10, [20], 5)  # masked: 20x10 and 5x20 weights, 300 of them
    x = torch.randn(8, 10)
    plan = memory_plan(model, k=4, batch=(x, None), samples_per_pass=2)
    parts = plan.parts
    assert plan.masked == 300 and plan.largest == 200
    assert parts["frozen weights"] == 4 * (300 + 20 + 5) and parts["weight copies"] == 4 * 300
    assert parts["logits"] == 1200 and parts["optimizer"] == 2400 and parts["logit gradients"] == 1200
    assert parts["masked copies"] == 2 * 4 * 300 and parts["noise"] == 2 * 2 * 300
    assert parts["copy gradients"] == 2 * 4 * 300
    assert parts["thresholds"] == 2 * 300 and memory_plan(model, k=4).parts["thresholds"] == 0
    # one sample's slice (2 examples) saves the ReLU's output 2x20 (also the next layer's input;
    # the batch itself is not counted) and returns 2x5 outputs, in fp32
    assert plan.activations_per_sample == 4 * (2 * 20 + 2 * 5)
    assert parts["activations"] == 2 * plan.activations_per_sample
    assert plan.largest_activation == 4 * 2 * 20 and parts["activation gradients"] == 2 * 2 * 160
    # the straight-through node of the 20x10 tensor: 4 constants per weight, 2 fp32 buffers per sample
    assert parts["backward buffers"] == (16 + 2 * 8) * 200
    held = 1300 + 1200 + 1200 + 2400  # model, layout copies, logits, Adam
    forward = 2400 + 1200 + 600 + 400 + 640 + 2 * 4 * 200  # copies, noise, thresholds, activations (and
    # their gradients), the largest copy's gradient
    straight = 1200 + 2400 + 1200 + 600 + 6400  # logits' and copies' gradients, noise, thresholds, buffers
    assert plan.phases(parts) == {"forward and backward": forward, "straight-through backward": straight}
    gpu = dataclasses.replace(plan, device="cuda")
    assert gpu.parts["heap retention"] == 0 and gpu.total == held + max(forward, straight)
    # the CPU's resident memory: glibc's heap holes besides, half the live peak
    assert plan.device == "cpu" and plan.parts["heap retention"] == (held + max(forward, straight)) // 2
    assert plan.total == held + max(forward, straight) + (held + max(forward, straight)) // 2
    half = plan.with_settings(samples_per_pass=1, dtype=torch.bfloat16)
    assert half.parts["masked copies"] == half.parts["copy gradients"] == 2 * 300 and half.parts["logits"] == 1200
    assert half.parts["backward buffers"] == (16 + 12) * 200  # and the gradient's fp32 cast
    assert "memory plan" in plan.summary() and "samples_per_pass=2" in str(plan)
    bf16 = memory_plan(model, k=4, batch=(x, None), dtype="bf16")
    # bf16: the input's cast 2x10 is new, the ReLU output and outputs halve; weight casts are not counted
    assert bf16.activations_per_sample == 2 * (2 * 10 + 2 * 20 + 2 * 5)
    with pytest.raises(ValueError, match="precision must be one of"):
        memory_plan(model, dtype="fp16")


class Conv1D(nn.Module):
    """Hugging Face's Conv1D (GPT-2) in miniature: the weight stored [in, out], y = x @ W + b."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(inputs, outputs)), nn.Parameter(torch.zeros(outputs))

    def forward(self, x):
        return x @ self.weight + self.bias


def test_the_memory_plan_counts_the_layout_copies_the_trainer_makes():
    model, x = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), Conv1D(8, 4)), torch.randn(8, 6)
    trainer = make_trainer(model, lambda out, y: out.pow(2).mean(), (x, None), k=4)
    # nn.Linear's weight [8, 6] gets a transposed copy; Conv1D's, already [in, out], none
    assert trainer.transposed == {"0.weight"} and trainer.plan.masked == 6 * 8 + 8 * 4
    assert trainer.plan.parts["weight copies"] == trainer.plan.copies == 4 * 6 * 8


_UNIT_TENSORS = ["attention.query.weight", "attention.key.weight", "attention.value.weight",
                 "attention.merge.weight", "ff1.weight", "ff2.weight"]


@pytest.mark.parametrize("path", ["vmap", "sequential"])
def test_the_memory_plan_of_heads_and_neurons_counts_units_and_gates_not_copies(path):
    torch.manual_seed(0)
    model, x = EncoderLayer(16, 4, 32).eval(), torch.randn(8, 5, 16)  # 4 heads of 4 features, 32 neurons
    plan = memory_plan(model, k=4, batch=(x, None), parameters=_UNIT_TENSORS, granularity="attention.*=head,neuron",
                       path=path)
    weights = memory_plan(model, k=4, batch=(x, None), parameters=_UNIT_TENSORS, path=path)
    parts = plan.parts
    # one logit per head and per neuron (4 + 32), against one per weight (4 x 256 + 2 x 512)
    assert (plan.masked, plan.units, weights.masked, weights.units) == (0, 36, 2048, 0)
    assert (parts["logits"], parts["optimizer"], parts["logit gradients"]) == (4 * 36, 8 * 36, 4 * 36)
    assert parts["noise"] == 4 * 2 * 36 and weights.parts["logits"] == 4 * 2048
    # the samples gate the inputs of merge (16 features) and ff2 (32): no weight is copied
    assert parts["masked copies"] == parts["copy gradients"] == parts["weight copies"] == 0
    assert parts["backward buffers"] == parts["thresholds"] == 0
    assert plan.gated == 16 + 32 and parts["gates"] == 8 * 4 * 48
    # the probe runs with the gates in place: after the first gate (merge's input, the attention output
    # 2x5x16, which it saves) everything wants a gradient: norm1's input (2x5x16) and statistics (2x
    # 2x5), ReLU's output 2x5x32 (which ff2's gate saves too), norm2's as norm1's, and the output 2x5x16;
    # the frozen projections after a gate save nothing
    assert plan.activations_per_sample == 4 * (160 + 160 + 20 + 320 + 160 + 20 + 160)
    assert plan.total < weights.total / 3 and "36 units" in plan.summary()


def test_the_memory_plan_of_row_masks_keeps_the_copies_with_a_logit_per_row():
    model, x = MLP(10, [20], 5), torch.randn(8, 10)  # 20x10 and 5x20 weights: 25 rows
    rows = memory_plan(model, k=4, batch=(x, None), samples_per_pass=2, granularity="row")
    weights = memory_plan(model, k=4, batch=(x, None), samples_per_pass=2)
    parts, same = rows.parts, weights.parts
    assert (rows.masked, rows.units, rows.broadcast) == (0, 25, 300)
    assert parts["logits"] == 4 * 25 and parts["optimizer"] == 8 * 25 and parts["noise"] == 2 * 2 * 25
    # the samples multiply the weights: the copies and their gradients as for weight masks
    assert parts["masked copies"] == same["masked copies"] == 2 * 4 * 300
    assert parts["copy gradients"] == same["copy gradients"]
    assert rows.activations_per_sample == weights.activations_per_sample
    # no layout copies, keep thresholds or per-weight constants of the straight-through node
    assert parts["weight copies"] == parts["thresholds"] == 0 and same["thresholds"] == 2 * 300
    assert parts["backward buffers"] == 2 * 8 * 200 and same["backward buffers"] == (16 + 2 * 8) * 200


def test_the_trainer_plans_its_unit_masks():
    torch.manual_seed(0)
    model, x = EncoderLayer(16, 4, 32).eval(), torch.randn(8, 5, 16)
    settings = {"parameters": _UNIT_TENSORS, "granularity": "attention.*=head,neuron"}
    trainer = make_trainer(model, lambda out, y: out.pow(2).mean(), (x, None), k=4, **settings)
    assert trainer.plan == memory_plan(model, k=4, batch=(x, None), **settings)


def test_the_activations_probe_keeps_nothing_alive():
    import gc

    model, x = MLP(10, [20], 5), torch.randn(8, 10)
    before = {id(t) for t in gc.get_objects() if isinstance(t, torch.Tensor)}
    for path in ("sequential", "vmap"):
        memory_plan(model, k=4, batch=(x, None), path=path)
    gc.collect()
    # e.g. the ReLU's output, which its own node saves: kept by a cycle the saved-tensor hook made
    kept = [t for t in gc.get_objects() if isinstance(t, torch.Tensor) and id(t) not in before and t.grad_fn]
    assert not kept, [tuple(t.shape) for t in kept]

def test_the_activations_probe_runs_on_the_steps_path():
    from modmask.models import CifarResNet

    torch.manual_seed(0)
    model, x = CifarResNet(blocks=1).eval(), torch.randn(8, 3, 8, 8)
    vmap, plain = memory_plan(model, k=4, batch=(x, None)), memory_plan(model, k=4, batch=(x, None), path="sequential")
    # under vmap the convolutions save their inputs in another layout as well: more than a plain call
    assert vmap.activations_per_sample > plain.activations_per_sample > 0
    lstm = nn.Sequential(nn.LSTM(6, 8, batch_first=True))  # vmap fails on it: the plain call's figures
    lstm_x = torch.randn(8, 5, 6)
    assert memory_plan(lstm, k=4, batch=(lstm_x, None)).activations_per_sample == \
        memory_plan(lstm, k=4, batch=(lstm_x, None), path="sequential").activations_per_sample


class KeywordModel(nn.Module):
    """A model called with keyword arguments, as Hugging Face models are: forward(inputs=, scale=)."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, inputs=None, scale=1.0):
        return {"logits": self.second(torch.relu(self.first(inputs))) * scale, "cache": object()}


def test_groups_equal_one_pass_for_keyword_batches():
    torch.manual_seed(0)
    model = KeywordModel()
    batches = [({"inputs": torch.randn(8, 6), "scale": 0.5}, torch.randint(0, 3, (8,))) for _ in range(4)]
    loss = lambda out, y: F.cross_entropy(out["logits"], y)  # noqa: E731
    logits = []
    for group in (4, 1):
        trainer = make_trainer(model, loss, batches[0], k=4, samples_per_pass=group, seed=3)
        for batch in batches:
            trainer.step([batch])
        logits.append(trainer.result().logits)
    for name in logits[0]:
        assert torch.allclose(logits[0][name], logits[1][name], atol=1e-6), name
    assert any((l != 2.0).any() for l in logits[0].values())  # the masks did train


@pytest.mark.parametrize("host_bits", [True, False])  # False: the per-sample seeds used on GPUs
def test_step_noise_gives_any_range_of_samples_the_full_draws_codes(host_bits):
    shapes = [(7, 3), (5,), (6, 2)]
    full, parts = UniformSource(9, host_bits=host_bits), UniformSource(9, host_bits=host_bits)
    for _ in range(2):  # two steps: the second starts where a full draw would have left the stream
        a, b = full.reserve(4, shapes), parts.reserve(4, shapes)
        for i, shape in enumerate(shapes):
            whole = a.take(i, 0, 4)
            assert whole.shape == (4, *shape) and whole.dtype == torch.int16
            assert torch.equal(whole, torch.cat([b.take(i, 0, 1), b.take(i, 1, 3), b.take(i, 3, 4)]))
    assert not torch.equal(a.take(0, 0, 4), UniformSource(9, host_bits=host_bits).draw(4, shapes[0]))
    if host_bits:  # the CPU stream is the one a draw per tensor always made
        old = np.random.PCG64(9)
        codes = old.random_raw((4 * 21 + 3) // 4).view(np.int16)[:4 * 21]
        assert torch.equal(UniformSource(9).reserve(4, shapes).take(0, 0, 4), torch.from_numpy(codes).view(4, 7, 3))


def test_a_plan_that_cannot_fit_names_the_settings_that_would():
    import dataclasses

    from modmask.core.memory import check_fits_device

    model = MLP(6, [512, 512], 3)
    plan = memory_plan(model, k=4, batch=(torch.randn(16, 6), None))
    room = int(plan.with_settings(samples_per_pass=2).needed / 0.85)  # only 2 samples per pass fit
    check_fits_device(plan, torch.device("cpu"), room)  # the check stops runs on a GPU only
    with pytest.raises(MemoryError, match=r"samples_per_pass=2 .*precision='bf16'.*fewer selected tensors"):
        check_fits_device(plan, torch.device("cuda"), room)
    joint = dataclasses.replace(plan, masks=3, k=12, samples_per_pass=12)  # three masks in one stage
    with pytest.raises(MemoryError, match=r"samples_per_pass=1 .*fewer masks per stage than 3"):
        check_fits_device(joint, torch.device("cuda"), int(joint.with_settings(samples_per_pass=3).needed / 0.85))
