"""Pretraining resumes from its last checkpoint and ends where an uninterrupted run ends."""

import pytest
import torch

from modmask.data.arithmetic import AddMulData, digit_loss
from modmask.data.sampling import RandomBatches
from modmask.experiments.pretrain import pretrain
from modmask.runs import RunDir
from modmask.models import MLP


def _model():
    """A model with dropout, whose draws come from torch's global generator."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Sequential(MLP(42, [16], 42), torch.nn.Dropout(0.5), MLP(42, [16], 20))


def test_pretraining_is_seeded_and_leaves_the_global_generator_alone(tmp_path):
    data = AddMulData.generate("valid", 2000)
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        torch.manual_seed(len(runs))  # whatever the caller's state
        before = torch.get_rng_state()
        model = pretrain(_model(), RandomBatches(data, 32, 1), digit_loss, RunDir(tmp_path / name), steps=20,
                         progress=False, seed=seed)
        assert torch.equal(torch.get_rng_state(), before)
        runs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])  # dropout draws from the seed


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path):
    data = AddMulData.generate("valid", 2000)
    reference = pretrain(_model(), RandomBatches(data, 32, 1), digit_loss, RunDir(tmp_path / "a"),
                         steps=50, checkpoint_every=10, progress=False, seed=0)

    calls = []

    def dies_at_step_25(outputs, targets):
        calls.append(1)
        if len(calls) == 26:
            raise KeyboardInterrupt
        return digit_loss(outputs, targets)

    run = RunDir(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        pretrain(_model(), RandomBatches(data, 32, 1), dies_at_step_25, run, steps=50, checkpoint_every=10,
                 progress=False, seed=0)
    assert (run.path / "checkpoints/pretrain-partial.pt").exists()
    resumed = pretrain(_model(), RandomBatches(data, 32, 1), digit_loss, run, steps=50, checkpoint_every=10,
                       progress=False, seed=0)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not (run.path / "checkpoints/pretrain-partial.pt").exists()
