"""Masks trained together in one pass equal the same masks trained one at a time."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import MaskConfig, train_mask
from modmask.core.joint import JointMaskTrainer, train_masks_jointly
from modmask.core.training import MaskTrainer
from modmask.models import MLP


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


@pytest.mark.parametrize("model_class", [lambda: MLP(6, (16, 16), 3), LoopModel])
def test_joint_masks_equal_masks_trained_alone(model_class):
    torch.manual_seed(0)
    model = model_class()
    configs = [MaskConfig(steps=5, k=4, beta=1e-3, lr=0.1), MaskConfig(steps=5, k=4, beta=1e-2, lr=0.05),
               MaskConfig(steps=5, k=4, beta=0.0, lr=0.2, grad_clip=None)]
    data = [_data(i) for i in range(3)]
    alone = [train_mask(model, data[i], F.cross_entropy, configs[i], seed=10 + i, progress=False) for i in range(3)]
    joint = train_masks_jointly(model, [(d, F.cross_entropy) for d in data], configs, seeds=[10, 11, 12],
                                progress=False)
    for a, b in zip(alone, joint):
        for name in a.logits:
            assert torch.allclose(a.logits[name], b.logits[name], atol=1e-5), name
        assert any((l != 2.0).any() for l in b.logits.values())  # the masks trained
    assert joint[0].history[-1]["loss"] == pytest.approx(alone[0].history[-1]["loss"], rel=1e-4)


def test_a_checkpoint_inside_a_joint_stage_resumes_to_the_same_masks():
    torch.manual_seed(0)
    model = MLP(6, (16,), 3)
    config = MaskConfig(steps=6, k=2, lr=0.1)
    data = [_data(i, count=6) for i in range(2)]
    functions = [(d, F.cross_entropy) for d in data]
    whole = train_masks_jointly(model, functions, config, seeds=[1, 2], progress=False)
    saved = []
    train_masks_jointly(model, functions, config, seeds=[1, 2], progress=False, checkpoint_every=4,
                        checkpoint=lambda step, state: saved.append((step, state)))
    step, state = saved[0]
    resumed = train_masks_jointly(model, [(d[step:], F.cross_entropy) for d in data], config, seeds=[1, 2],
                                  progress=False, start=step, state=state)
    for a, b in zip(whole, resumed):
        for name in a.logits:
            assert torch.equal(a.logits[name], b.logits[name]), name


def test_bad_joint_stages_are_clear_errors():
    model, other = MLP(6, (16,), 3), MLP(6, (16,), 3)
    with pytest.raises(ValueError, match="mask 1 trains on another model"):
        JointMaskTrainer([MaskTrainer(model, F.cross_entropy), MaskTrainer(other, F.cross_entropy)])
    with pytest.raises(ValueError, match="mask 1 masks other tensors"):
        JointMaskTrainer([MaskTrainer(model, F.cross_entropy), MaskTrainer(model, F.cross_entropy, biases=True)])
    with pytest.raises(ValueError, match="original_clipping"):
        JointMaskTrainer([MaskTrainer(model, F.cross_entropy, original_clipping=True)])
    joint = JointMaskTrainer([MaskTrainer(model, F.cross_entropy, k=4), MaskTrainer(model, F.cross_entropy, k=4)])
    with pytest.raises(ValueError, match="same examples per sample.*mask 0: batch 16 for k=4, mask 1: batch 8"):
        joint.step([_data(0)[0], _data(1, batch=8)[0]])
    with pytest.raises(ValueError, match="mask 1 has steps=3"):
        train_masks_jointly(model, [(_data(0), F.cross_entropy)] * 2, [MaskConfig(steps=2), MaskConfig(steps=3)],
                            seeds=[0, 1], progress=False)


def test_the_memory_plan_of_a_joint_stage_counts_every_mask(caplog):
    model = MLP(6, (16,), 3)
    joint = JointMaskTrainer([MaskTrainer(model, F.cross_entropy, k=2, seed=s) for s in range(3)])
    with caplog.at_level("INFO", logger="modmask"):
        joint.step([_data(s)[0] for s in range(3)])
    masked = sum(l[0].numel() for l in joint.logits.values())
    assert joint.plan.masks == 3 and joint.plan.k == 6
    assert joint.plan.parts["optimizer"] == 3 * 8 * masked and joint.plan.parts["masked copies"] == 6 * 4 * masked
    assert "joint stage of 3 masks" in caplog.text and "3 masks, k=6" in caplog.text


def test_a_checkpoint_of_another_format_is_a_clear_error():
    model = MLP(6, (16,), 3)
    joint = JointMaskTrainer([MaskTrainer(model, F.cross_entropy, seed=s) for s in range(2)])
    with pytest.raises(ValueError, match="older modmask's joint stage.*masks-partial.pt"):
        joint.load_state_dict({"masks": []})


@pytest.mark.parametrize("path", ["vmap", "sequential"])
def test_joint_masks_in_sample_groups_equal_masks_trained_alone(path):
    torch.manual_seed(0)
    model = MLP(6, (16, 16), 3)
    configs = [MaskConfig(steps=4, k=4, samples_per_pass=2, lr=0.1, path=path),
               MaskConfig(steps=4, k=4, samples_per_pass=2, lr=0.05, beta=1e-2, path=path)]
    data = [_data(i) for i in range(2)]
    alone = [train_mask(model, data[i], F.cross_entropy, configs[i], seed=i, progress=False) for i in range(2)]
    joint = train_masks_jointly(model, [(d, F.cross_entropy) for d in data], configs, seeds=[0, 1], progress=False)
    ungrouped = train_mask(model, data[0], F.cross_entropy, configs[0], samples_per_pass=4, seed=0, progress=False)
    for a, b in zip(alone, joint):
        for name in a.logits:
            assert torch.allclose(a.logits[name], b.logits[name], atol=1e-5), name
    for name in ungrouped.logits:
        assert torch.allclose(ungrouped.logits[name], joint[0].logits[name], atol=1e-5), name
    assert joint[0].history[-1]["loss"] == pytest.approx(alone[0].history[-1]["loss"], rel=1e-4)


def test_joint_masks_in_bf16_match_masks_trained_alone_in_bf16():
    torch.manual_seed(0)
    model = MLP(6, (16, 16), 3)
    config = MaskConfig(steps=20, k=2, lr=0.3, beta=1e-3, precision="bf16")
    data = [_data(i, count=20) for i in range(2)]
    alone = [train_mask(model, data[i], F.cross_entropy, config, seed=i, progress=False) for i in range(2)]
    joint = train_masks_jointly(model, [(d, F.cross_entropy) for d in data], config, seeds=[0, 1], progress=False)
    for a, b in zip(alone, joint):
        kept_alone, kept_joint = a.masks, b.masks
        assert 0.1 < kept_joint.density() < 0.9  # the masks trained away from all-kept
        # bf16 products of another batch shape round differently, which can flip a sample now and then
        same = sum(int((kept_alone[n] == kept_joint[n]).sum()) for n in a.logits) / sum(l.numel() for l in a.logits.values())
        assert same > 0.95


def test_samples_per_pass_auto_is_resolved_for_every_mask_of_a_joint_stage():
    model = MLP(6, (16,), 3)
    joint = JointMaskTrainer([MaskTrainer(model, F.cross_entropy, k=4, samples_per_pass="auto", seed=s)
                              for s in range(2)])
    joint.step([_data(s)[0] for s in range(2)])
    assert [t.samples_per_pass for t in joint.trainers] == [4, 4]  # a tiny model fits: all samples at once
    assert joint.plan.samples_per_pass == 8 and joint.plan.masks == 2
