import pytest
import torch
from torch import nn

from modmask import Masks


def _masks(**rows):
    return Masks({name: torch.tensor(values, dtype=torch.bool) for name, values in rows.items()})


def test_set_algebra_and_counts():
    a = _masks(w=[1, 1, 0, 0], v=[1, 0])
    b = _masks(w=[1, 0, 1, 0], v=[1, 1])
    assert (a | b) == _masks(w=[1, 1, 1, 0], v=[1, 1])
    assert (a & b) == _masks(w=[1, 0, 0, 0], v=[1, 0])
    assert (a - b) == _masks(w=[0, 1, 0, 0], v=[0, 0])
    assert (~a) == _masks(w=[0, 0, 1, 1], v=[0, 1])
    assert a.counts() == {"w": 2, "v": 1} and a.count() == 3 and a.size() == 6
    assert a.densities() == {"w": 0.5, "v": 0.5} and a.density() == 0.5


def test_only_and_replace():
    a = _masks(w=[1, 0], v=[0, 0])
    full = _masks(w=[1, 1], v=[1, 1])
    assert set(a.only(["w"])) == {"w"}
    assert (~a).replace(full, ["v"]) == _masks(w=[0, 1], v=[1, 1])
    with pytest.raises(KeyError, match="no mask for"):
        a.only(["nope"])


def test_combining_masks_of_different_tensors_is_an_error():
    with pytest.raises(ValueError, match="different tensors"):
        _masks(w=[1]) | _masks(v=[1])


def test_non_bool_tensors_are_refused():
    with pytest.raises(TypeError, match="bool"):
        Masks({"w": torch.ones(3)})


def test_from_logits_is_strictly_positive():
    assert Masks.from_logits({"w": torch.tensor([-1.0, 0.0, 0.5])}) == _masks(w=[0, 0, 1])


def test_save_load_round_trip_and_foreign_model(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = Masks({"0.weight": torch.rand(4, 3) > 0.5, "2.weight": torch.rand(2, 4) > 0.5})
    path = tmp_path / "m.safetensors"
    masks.save(path)
    assert Masks.load(path, model) == masks
    other = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"another model: '0.weight' has shape \(4, 3\)"):
        Masks.load(path, other)
    with pytest.raises(ValueError, match="does not have"):
        Masks.load(path, nn.Linear(3, 4))
    with pytest.raises(FileNotFoundError):
        Masks.load(tmp_path / "missing.safetensors")
