"""The permuted-MNIST protocol on tiny generated IDX data: freezing, re-initialisation, resume."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modmask import cli
from modmask.core.training import TrainedMask


def _write_idx(path, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """400 'images' whose label is written into the brightness of a pixel block: learnable."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.RandomState(0)
    for split, n in (("train", 400), ("t10k", 50)):
        labels = rng.randint(0, 10, n)
        images = rng.randint(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label:2 * label + 3, :] = 255
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", images, 0x803)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels, 0x801)
    return root


def _run(out, data, *extra):
    return cli.main(["run", "permuted_mnist", "--preset", "smoke", "--out", str(out), "--quiet",
                     "--set", f"data={data}", "--set", "verify_data=false", "--set", "steps=200", "--set", "lr=0.05",
                     "--set", "beta=0.05", *extra])


def test_protocol_freezes_used_weights_and_relearns_the_rest(tiny_mnist, tmp_path):
    assert _run(tmp_path, tiny_mnist) == 0
    seed = tmp_path / "seed-0"
    after = [load_file(str(seed / f"checkpoints/after-task-{t}.safetensors")) for t in range(3)]
    mask0 = TrainedMask.load(seed / "masks/task-0.safetensors").masks
    assert 0.0 < mask0.density() < 0.9  # the regulariser removed weights
    changed_free = 0
    for name, used in mask0.items():
        if name.startswith("layers.0."):
            continue  # the first layer is always re-initialised
        for later in after[1:]:  # task 0's weights stay bit-identical in every later task
            assert torch.equal(later[name][used], after[0][name][used]), name
        changed_free += int((after[1][name][~used] != after[0][name][~used]).sum())
    assert changed_free > 0  # free weights were re-initialised and trained
    results = json.loads((tmp_path / "results.json").read_text())["aggregate"]
    assert len(results["accuracy"]) == 3 and len(results["sharing"]) == 2
    assert set(results["sharing"][0]) == {"layers.0.weight", "layers.1.weight", "layers.2.weight",
                                          "layers.3.weight"}
    assert (tmp_path / "figures/sharing.png").exists() and (tmp_path / "report.md").exists()
    # every task's accuracy with its mask in both removal modes (the masks removed weights: the modes differ)
    block = results["removal_modes"]
    assert block["trained_with"] == "zero" and list(block["modes"]) == ["zero", "mean"]
    assert [row["accuracy"] for row in block["modes"]["zero"].values()] == results["accuracy"]
    assert list(block["modes"]["mean"]) == ["T1", "T2", "T3"] and block["modes"]["mean"] != block["modes"]["zero"]
    report = (tmp_path / "report.md").read_text()
    assert "## The same in both removal modes [%]" in report
    assert "| condition | accuracy with its mask, zero | accuracy with its mask, mean |\n|---|---|---|\n| T1 mask |" in report
    _assert_task_curves(tmp_path, tiny_mnist, results)


def _assert_task_curves(out, data, results):
    """Every task's mask ranking on its own task, in the network that runs it (final weights, the
    task's first layer, its mask applied): pinned by hand on the saved files; in the report."""
    from modmask import CurveConfig, density_curves
    from modmask.data.mnist import PermutedMNIST, load_mnist, normalise, permuted_mnist_tasks, train_valid_split
    from modmask.data.sampling import fixed_batches
    from modmask.experiments.permuted_mnist import task_network
    from modmask.models import MLP

    mnist = load_mnist(str(data), verify=False)
    images, labels = mnist["train"]
    train_idx, valid_idx = train_valid_split(len(labels))
    _, mean, std = normalise(images[train_idx])
    valid_x, _, _ = normalise(images[valid_idx], mean, std)
    model = MLP(784, (32, 32, 16), 10)
    model.load_state_dict(load_file(str(out / "seed-0/checkpoints/after-task-2.safetensors")))
    assert list(results["curves"]) == ["task-0", "task-1", "task-2"]
    for task, order in enumerate(permuted_mnist_tasks(3)):
        first = load_file(str(out / f"seed-0/checkpoints/after-task-{task}.safetensors"))
        trained = TrainedMask.load(out / f"seed-0/masks/task-{task}.safetensors")
        network = task_network(model, {n: first[n] for n in ("layers.0.weight", "layers.0.bias")}, trained.masks)
        valid = fixed_batches(PermutedMNIST(valid_x, labels[valid_idx], order), 2000)
        correct = lambda out, y: out.argmax(-1) == y  # noqa: E731
        expected = density_curves(network.eval(), {f"mask task-{task}": trained.logits}, valid, correct,
                                  CurveConfig((0.01, 0.1, 0.5), ()))
        curve = results["curves"][f"task-{task}"]
        assert curve["full"]["mean"] == pytest.approx(results["accuracy"][task]["mean"] / 100)  # the masked task
        assert list(curve["methods"]) == [f"mask task-{task}", "magnitude", "wanda", "taylor", "random",
                                          "random per tensor"]
        for side in ("sufficiency", "necessity"):
            assert [v["mean"] for v in curve["methods"][f"mask task-{task}"][side]] == \
                pytest.approx(expected["methods"][f"mask task-{task}"][side]), (task, side)
    report = (out / "report.md").read_text()
    assert "## Curves over density" in report and "| T2 mask |" in report and "![curves task-2](figures/curves_task-2.png)" in report


def test_resume_after_a_finished_task_gives_the_same_result(tiny_mnist, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert _run(first, tiny_mnist) == 0
    assert _run(second, tiny_mnist) == 0
    for name in ("results.json", "seed-0/timings.json"):
        (second / name).unlink()
    for task in (1, 2):  # as if killed after task 0
        (second / f"seed-0/masks/task-{task}.safetensors").unlink()
        (second / f"seed-0/checkpoints/after-task-{task}.safetensors").unlink()
    assert _run(second, tiny_mnist) == 0
    a = json.loads((first / "results.json").read_text())["aggregate"]
    b = json.loads((second / "results.json").read_text())["aggregate"]
    assert a["accuracy"] == b["accuracy"] and a["sharing"] == b["sharing"]


def test_permutations_are_the_papers():
    from modmask.data.mnist import permuted_mnist_tasks
    orders = permuted_mnist_tasks(3)
    assert torch.equal(orders[0], torch.arange(784))
    assert torch.equal(orders[1], torch.from_numpy(np.random.RandomState(1).permutation(784)))


def test_a_task_is_evaluated_with_its_first_layer_on_a_copy():
    from modmask.experiments.permuted_mnist import with_first_layer
    from modmask.models import MLP

    model = MLP(6, (5,), 3)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    own = {"layers.0.weight": torch.ones(5, 6), "layers.0.bias": torch.zeros(5)}
    task_model = with_first_layer(model, own)
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())  # the model is untouched
    assert torch.equal(task_model.layers[0].weight, own["layers.0.weight"])
    assert torch.equal(task_model.layers[1].weight, model.layers[1].weight)
