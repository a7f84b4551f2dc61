"""Device choice for the experiments, and batches moved to the network's device."""

import torch

from modmask import cli
from modmask.core.batches import to_device
from modmask.launch import placement


def test_auto_picks_the_cpu_here_and_cuda_without_a_gpu_is_a_clear_error(capsys, tmp_path):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert placement.resolve_device("auto").type == expected
    assert placement.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        out = tmp_path / "unused"
        assert cli.main(["run", "addmul", "--preset", "smoke", "--device", "cuda", "--out", str(out)]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
        assert not out.exists()  # refused before anything was written
    assert cli.main(["run", "addmul", "--preset", "smoke", "--device", "gpu0", "--out", str(tmp_path / "x")]) == 2
    assert "--device gpu0" in capsys.readouterr().err


def test_to_device_moves_every_tensor_of_a_nested_batch():
    batch = ((torch.ones(2), torch.zeros(2, dtype=torch.long), 7, None), (torch.ones(1), "name"))
    moved = to_device(batch, torch.device("cpu"))
    assert moved[0][2] == 7 and moved[0][3] is None and moved[1][1] == "name"
    assert torch.equal(moved[0][0], batch[0][0]) and moved[0][1].dtype == torch.long
