"""Pretraining resumes from its last checkpoint and ends where an uninterrupted run ends."""

import pytest
import torch

from modmask.data.arithmetic import AddMulData, digit_loss
from modmask.data.sampling import RandomBatches
from modmask.experiments.pretrain import pretrain
from modmask.runs import RunDir
from modmask.models import MLP


def _model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MLP(42, [16], 20)


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path):
    data = AddMulData.generate("valid", 2000)
    reference = pretrain(_model(), RandomBatches(data, 32, 1), digit_loss, RunDir(tmp_path / "a"),
                         steps=50, checkpoint_every=10, progress=False)

    calls = []

    def dies_at_step_25(outputs, targets):
        calls.append(1)
        if len(calls) == 26:
            raise KeyboardInterrupt
        return digit_loss(outputs, targets)

    run = RunDir(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        pretrain(_model(), RandomBatches(data, 32, 1), dies_at_step_25, run, steps=50, checkpoint_every=10,
                 progress=False)
    assert (run.path / "checkpoints/pretrain-partial.pt").exists()
    resumed = pretrain(_model(), RandomBatches(data, 32, 1), digit_loss, run, steps=50, checkpoint_every=10,
                       progress=False)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not (run.path / "checkpoints/pretrain-partial.pt").exists()
