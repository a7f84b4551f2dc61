"""Device choice for the experiments, and batches moved to the network's device."""

import pytest
import torch

from modmask import cli
from modmask.core.masking import to_device
from modmask.experiments import placement


def test_auto_picks_the_cpu_here_and_cuda_without_a_gpu_is_a_clear_error(capsys):
    placement.set_device("auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert placement.device().type == expected
    assert placement.place(torch.nn.Linear(2, 2)).weight.device.type == expected
    if not torch.cuda.is_available():
        assert cli.main(["run", "addmul", "--preset", "smoke", "--device", "cuda", "--out", "unused"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    placement.set_device("cpu")
    assert placement.device() == torch.device("cpu")
    placement.set_device("auto")


def test_to_device_moves_every_tensor_of_a_nested_batch():
    batch = ((torch.ones(2), torch.zeros(2, dtype=torch.long), 7, None), (torch.ones(1), "name"))
    moved = to_device(batch, torch.device("cpu"))
    assert moved[0][2] == 7 and moved[0][3] is None and moved[1][1] == "name"
    assert torch.equal(moved[0][0], batch[0][0]) and moved[0][1].dtype == torch.long
