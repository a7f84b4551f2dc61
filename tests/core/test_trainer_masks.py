"""M masks trained together by one MaskTrainer equal the same masks trained one at a time: each
mask keeps its own batches, loss, beta, lr, clipping, noise and Adam (bitwise, on one thread)."""

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import Execution, MaskConfig, MaskTrainer, train_mask, train_masks
from modmask.core import training
from modmask.models import MLP


@pytest.fixture
def one_thread():
    """One intra-op thread: every float sum in one order, so runs can be compared bitwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(seed: int, count: int = 5, batch: int = 16):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 6, generator=generator), torch.randint(0, 3, (batch,), generator=generator))
            for _ in range(count)]


class LoopModel(nn.Module):
    """Runs on the sequential path (nn.GRU cannot be batched by vmap)."""

    def __init__(self):
        super().__init__()
        self.rnn, self.out = nn.GRU(6, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.rnn(x[:, None, :])[0][:, -1])


def _assert_same_logits(alone, together):
    for a, b in zip(alone, together, strict=True):
        assert list(a.logits) == list(b.logits)
        for name in a.logits:
            assert torch.equal(a.logits[name], b.logits[name]), name
    assert all(any((l != 2.0).any() for l in b.logits.values()) for b in together)  # the masks trained


@pytest.mark.parametrize("model_class", [lambda: MLP(6, (16, 16), 3), LoopModel])
def test_masks_trained_together_equal_masks_trained_alone(model_class, one_thread):
    torch.manual_seed(0)
    model = model_class()
    configs = [MaskConfig(steps=5, k=4, beta=1e-3, lr=0.1), MaskConfig(steps=5, k=4, beta=1e-2, lr=0.05),
               MaskConfig(steps=5, k=4, beta=0.0, lr=0.2, grad_clip=None)]
    data = [_data(i) for i in range(3)]
    alone = [train_mask(model, data[i], F.cross_entropy, configs[i], seed=10 + i, progress=False) for i in range(3)]
    together = train_masks(model, [(d, F.cross_entropy) for d in data], configs, seeds=[10, 11, 12],
                           progress=False)
    _assert_same_logits(alone, together)
    for a, b in zip(alone, together):
        assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


def test_each_mask_is_clipped_alone(one_thread):
    """Clips that bind by other amounts for each mask (other data, beta and clip): every mask's
    gradient is scaled to its own clip, as clip_grad_norm_ on that mask alone would."""
    torch.manual_seed(0)
    model = MLP(6, (16,), 3)
    configs = [MaskConfig(k=2, lr=0.1, beta=1.0, grad_clip=0.01), MaskConfig(k=2, lr=0.1, beta=1e-3, grad_clip=0.001)]
    data = [_data(i, count=4) for i in range(2)]
    trainer = MaskTrainer(model, F.cross_entropy, configs, seed=[0, 1]).prepare([d[0] for d in data])
    for step in range(4):
        trainer.step([d[step] for d in data])
        norms = [float(torch.cat([l.grad[m].flatten() for l in trainer.logits.values()]).norm()) for m in range(2)]
        assert norms == pytest.approx([0.01, 0.001], rel=1e-3), step  # clip / (norm + 1e-6) * norm
    alone = [train_mask(model, data[m], F.cross_entropy, dataclasses.replace(configs[m], steps=4), seed=m,
                        progress=False) for m in range(2)]
    _assert_same_logits(alone, [trainer.result(m) for m in range(2)])


def test_a_checkpoint_inside_a_stage_of_several_masks_resumes_to_the_same_masks():
    torch.manual_seed(0)
    model = MLP(6, (16,), 3)
    config = MaskConfig(steps=6, k=2, lr=0.1)
    data = [_data(i, count=6) for i in range(2)]
    functions = [(d, F.cross_entropy) for d in data]
    whole = train_masks(model, functions, config, seeds=[1, 2], progress=False)
    saved = []
    train_masks(model, functions, config, seeds=[1, 2], progress=False, checkpoint_every=4,
                checkpoint=lambda step, state: saved.append((step, state)))
    step, state = saved[0]
    resumed = train_masks(model, [(d[step:], F.cross_entropy) for d in data], config, seeds=[1, 2],
                          progress=False, start=step, state=state)
    for a, b in zip(whole, resumed):
        for name in a.logits:
            assert torch.equal(a.logits[name], b.logits[name]), name


def test_a_trainer_of_several_masks_resumes_from_its_state_dict_to_the_same_logits(one_thread):
    torch.manual_seed(0)
    model = MLP(6, (16,), 3)
    configs = [MaskConfig(k=2, lr=0.1), MaskConfig(k=2, lr=0.05, beta=1e-2)]
    data = [_data(i, count=6) for i in range(2)]
    whole = MaskTrainer(model, F.cross_entropy, configs, seed=[3, 4]).prepare([d[0] for d in data])
    for step in range(6):
        if step == 3:
            state = whole.state_dict()  # taken mid-way; the run then goes on: a snapshot, not views
        whole.step([d[step] for d in data])
    resumed = MaskTrainer(model, F.cross_entropy, configs, seed=[3, 4])
    resumed.load_state_dict(state)
    resumed.prepare([d[3] for d in data])
    restarted = MaskTrainer(model, F.cross_entropy, configs, seed=[3, 4]).prepare([d[3] for d in data])
    for step in range(3, 6):
        resumed.step([d[step] for d in data])
        restarted.step([d[step] for d in data])
    for name, logits in whole.logits.items():
        assert torch.equal(logits, resumed.logits[name]), name
        assert not torch.equal(logits, restarted.logits[name]), name  # without the state: other logits


def test_masks_that_cannot_share_a_trainer_are_clear_errors():
    model = MLP(6, (16,), 3)
    for field, other in (("biases", True), ("k", 2), ("mode", "train"), ("parameters", "layers.0.*")):
        with pytest.raises(ValueError, match=f"mask 1 has another {field} than mask 0.*stage of its own"):
            MaskTrainer(model, F.cross_entropy, [MaskConfig(), MaskConfig(**{field: other})])
    quirk = MaskConfig(original_clipping=True)
    for configs in ([quirk, MaskConfig()], [MaskConfig(), quirk]):
        with pytest.raises(ValueError, match="original_clipping and trainable weights couple the masks"):
            MaskTrainer(model, F.cross_entropy, configs)
    with pytest.raises(ValueError, match="original_clipping and trainable weights couple the masks"):
        MaskTrainer(model, F.cross_entropy, seed=[0, 1], trainable={"layers.0.weight": torch.ones(16, 6) > 0})
    with pytest.raises(ValueError, match=r"one loss_fn, config and seed per mask: got \{'loss_fn': 2, 'seed': 3\}"):
        MaskTrainer(model, [F.cross_entropy] * 2, seed=[0, 1, 2])
    trainer = MaskTrainer(model, F.cross_entropy, MaskConfig(k=4), seed=[0, 1])
    with pytest.raises(RuntimeError, match=r"call trainer.prepare\(batches\)"):
        trainer.step([_data(0)[0], _data(1)[0]])
    with pytest.raises(ValueError, match="give one batch per mask: a list of 2"):
        trainer.prepare([_data(0)[0]])
    with pytest.raises(ValueError, match="need batches of one size.*mask 0: 16, mask 1: 8"):
        trainer.prepare([_data(0)[0], _data(1, batch=8)[0]])
    with pytest.raises(ValueError, match="mask 1 has steps=3"):
        train_masks(model, [(_data(0), F.cross_entropy)] * 2, [MaskConfig(steps=2), MaskConfig(steps=3)],
                    seeds=[0, 1], progress=False)


def test_the_memory_plan_of_several_masks_counts_every_mask(caplog):
    model = MLP(6, (16,), 3)
    trainer = MaskTrainer(model, F.cross_entropy, MaskConfig(k=2), seed=[0, 1, 2])
    with caplog.at_level("INFO", logger="modmask"):
        trainer.prepare([_data(s)[0] for s in range(3)])
    masked = sum(l[0].numel() for l in trainer.logits.values())
    assert trainer.masks == 3 and all(l.shape[0] == 3 for l in trainer.logits.values())
    assert trainer.plan.masks == 3 and trainer.plan.k == 6
    assert trainer.plan.parts["optimizer"] == 3 * 8 * masked and trainer.plan.parts["masked copies"] == 6 * 4 * masked
    assert "3 masks, k=6" in caplog.text


def test_a_checkpoint_of_another_format_is_a_clear_error():
    model = MLP(6, (16,), 3)
    trainer = MaskTrainer(model, F.cross_entropy, seed=[0, 1])
    with pytest.raises(ValueError, match="older modmask's joint stage.*masks-partial.pt"):
        trainer.load_state_dict({"masks": []})


@pytest.mark.parametrize("path", ["vmap", "sequential"])
def test_masks_in_sample_groups_equal_masks_trained_alone(path, one_thread):
    torch.manual_seed(0)
    model = MLP(6, (16, 16), 3)
    configs = [MaskConfig(steps=4, k=4, lr=0.1), MaskConfig(steps=4, k=4, lr=0.05, beta=1e-2)]
    execution = Execution(samples_per_pass=2, path=path)
    data = [_data(i) for i in range(2)]
    alone = [train_mask(model, data[i], F.cross_entropy, configs[i], execution, seed=i, progress=False)
             for i in range(2)]
    together = train_masks(model, [(d, F.cross_entropy) for d in data], configs, execution, seeds=[0, 1],
                           progress=False)
    _assert_same_logits(alone, together)
    ungrouped = train_mask(model, data[0], F.cross_entropy, configs[0], execution, samples_per_pass=4, seed=0,
                           progress=False)
    for name in ungrouped.logits:  # groups change the order of float sums only
        assert torch.allclose(ungrouped.logits[name], together[0].logits[name], atol=1e-5), name


@pytest.mark.parametrize("path", ["vmap", "sequential"])
def test_masks_in_bf16_match_masks_trained_alone_in_bf16(path, one_thread):
    torch.manual_seed(0)
    model = MLP(6, (16, 16), 3)
    config = MaskConfig(steps=20, k=2, lr=0.3, beta=1e-3)
    execution = Execution(precision="bf16", path=path)
    data = [_data(i, count=20) for i in range(2)]
    alone = [train_mask(model, data[i], F.cross_entropy, config, execution, seed=i, progress=False) for i in range(2)]
    together = train_masks(model, [(d, F.cross_entropy) for d in data], config, execution, seeds=[0, 1],
                           progress=False)
    for a, b in zip(alone, together):
        assert 0.1 < b.masks.density() < 0.9  # the masks trained away from all-kept
        assert a.masks == b.masks
        for name in a.logits:  # (bitwise here; a bf16 kernel chosen by batch shape could round otherwise)
            assert torch.allclose(a.logits[name], b.logits[name], rtol=0, atol=1e-4), name


def test_samples_per_pass_auto_is_resolved_for_every_mask(monkeypatch):
    model = MLP(6, (256,), 3)
    batches = [_data(s)[0] for s in range(2)]
    auto = MaskTrainer(model, F.cross_entropy, MaskConfig(k=4), Execution(samples_per_pass="auto"), seed=[0, 1])
    auto.prepare(batches)
    assert auto.samples_per_pass == 4  # a tiny model fits: all samples at once
    assert auto.plan.samples_per_pass == 8 and auto.plan.masks == 2 and auto.plan.k == 8
    # room for the plan with 2 samples of each mask per pass only
    room = int(auto.plan.with_settings(samples_per_pass=4).needed / 0.85)
    monkeypatch.setattr(training, "free_memory", lambda device: room)
    fewer = MaskTrainer(model, F.cross_entropy, MaskConfig(k=4), Execution(samples_per_pass="auto"), seed=[0, 1])
    fewer.prepare(batches)
    assert fewer.samples_per_pass == 2 and fewer.plan.samples_per_pass == 4
    for trainer in (auto, fewer):
        trainer.step(batches)
    for name, logits in auto.logits.items():
        assert torch.allclose(logits, fewer.logits[name], atol=1e-6), name


class OwnLoss(nn.Module):
    """Computes its loss itself, as a Hugging Face model given labels: a scalar per call, which
    comes back as one value per mask sample."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x, labels):
        return {"loss": F.cross_entropy(self.second(torch.relu(self.first(x))), labels)}


def test_a_loss_the_model_computes_itself_reaches_each_mask_as_its_own_samples(one_thread):
    torch.manual_seed(0)
    model = OwnLoss()
    seen = []

    def loss(out, _):
        seen.append(tuple(out["loss"].shape))
        return out["loss"].mean()

    data = [[{"x": x, "labels": y} for x, y in _data(i, count=2)] for i in range(2)]
    config = MaskConfig(steps=2, k=4, lr=0.1)
    alone = [train_mask(model, data[i], loss, config, seed=i, progress=False) for i in range(2)]
    seen.clear()
    together = train_masks(model, [(d, loss) for d in data], config, seeds=[0, 1], progress=False)
    assert seen == [(4,), (4,)] * 3  # each mask's k samples (first with every weight kept: the reference loss)
    for a, b in zip(alone, together):
        assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


def test_a_stage_in_train_mode_resumes_with_the_dropout_draws_it_would_have_made(one_thread):
    """mode='train': the checkpoint holds torch's generator, so a resumed stage's dropout is exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3)).eval()
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator))
            for _ in range(6)]
    config = MaskConfig(steps=6, k=2, lr=0.1, mode="train")
    whole = train_masks(model, [(data, F.cross_entropy)], config, seeds=[1], progress=False)
    saved = []
    train_masks(model, [(data, F.cross_entropy)], config, seeds=[1], progress=False, checkpoint_every=3,
                checkpoint=lambda step, state: saved.append((step, state)))
    step, state = saved[0]
    resumed = train_masks(model, [(data[step:], F.cross_entropy)], config, seeds=[1], progress=False, start=step,
                          state=state)
    _assert_same_logits(whole, resumed)
    without = train_masks(model, [(data[step:], F.cross_entropy)], config, seeds=[1], progress=False, start=step,
                          state={k: v for k, v in state.items() if k != "rng"})
    assert any(not torch.equal(whole[0].logits[n], without[0].logits[n]) for n in whole[0].logits)
