"""Bad input is refused with a clear error that names the problem and the fix, before any work:
masks of another model, files that are not mask files, masks that cannot be compared."""

import re

import pytest
import torch
from torch import nn

from modmask import (Masks, collect, evaluate, exclusive, half_masks, inverse, iou, masked_call, random_control,
                     shared_fraction, shared_fraction_chance, union)
from modmask.core.masks import read_metadata
from modmask.runs.study import half_mask_test

SHAPE = r"'0.weight' has shape \(8, 3\) in the[a-z ]* mask but \(4, 3\) in the model"
FIX = "pass a mask made for this model, or the model it was made for"


def _net(hidden):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _ones(model):
    return Masks({n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()})


def _counted(model):
    """The model, and a list that grows by one at every forward call."""
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return model, calls


BATCHES = [(torch.randn(5, 3), torch.zeros(5)), (torch.randn(5, 3), torch.zeros(5))]


def metric(outputs, targets):
    return outputs.sum(1)


ENTRY_POINTS = {
    "evaluate": lambda model, masks: evaluate(model, masks, BATCHES, metric),
    "collect": lambda model, masks: collect(model, masks, BATCHES, metric),
    "masked_call": lambda model, masks: masked_call(model, masks, BATCHES[0][0]),
    "random_control removal": lambda model, masks: random_control(model, masks, BATCHES, metric, draws=2),
    "random_control keep": lambda model, masks: random_control(model, masks, BATCHES, metric, draws=2, keep=True),
    "half_mask_test": lambda model, masks: half_mask_test(model, masks, BATCHES, metric),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_masks_of_a_larger_model_are_refused_before_the_model_runs(entry):
    model, calls = _counted(_net(4))
    larger = _ones(_net(8))  # same architecture, wider hidden layer
    with pytest.raises(ValueError, match=rf"does not fit the model \(Sequential\), it was made for another model: "
                                         rf"{SHAPE} \(a model of another size\?\); {FIX}"):
        ENTRY_POINTS[entry](model, larger)
    assert calls == []  # refused before any work


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_masks_naming_a_tensor_the_model_lacks_are_refused_before_the_model_runs(entry):
    model, calls = _counted(_net(4))
    masks = Masks({**_ones(model), "4.weight": torch.ones(2, 2, dtype=torch.bool)})  # a layer it does not have
    with pytest.raises(ValueError, match=rf"made for another model: it masks '4.weight', which this model does not "
                                         rf"have; {FIX}"):
        ENTRY_POINTS[entry](model, masks)
    assert calls == []


def test_a_full_mask_of_another_model_is_refused_by_the_random_control():
    model, calls = _counted(_net(4))
    masks = _ones(model)
    full = _ones(_net(8))
    with pytest.raises(ValueError, match=rf"the full mask does not fit the model.*{SHAPE}"):
        random_control(model, masks, BATCHES, metric, full=full, keep_full_on=["0.weight"])
    assert calls == []


def test_the_full_mask_on_tensors_it_does_not_cover_is_refused():
    masks = _ones(_net(4))
    with pytest.raises(ValueError, match=r"cannot replace tensors \['9.weight'\]: not in both masks"):
        inverse(masks, masks, keep_full_on=["9.weight"])
    other = Masks({**masks, "0.weight": torch.ones(8, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"tensor '0.weight' has shape \(4, 3\) in these masks but \(8, 3\) in the other masks"):
        inverse(masks, other, keep_full_on=["0.weight"])


def test_half_masks_on_tensors_the_mask_does_not_cover_are_refused():
    masks = _ones(_net(4))
    with pytest.raises(ValueError, match=r"the early tensors \['conv.weight'\] are not in the masks, which cover "
                                         r"\['0.weight', '0.bias', '2.weight', '2.bias'\]; name early tensors"):
        half_masks(masks, ["0.weight", "conv.weight"])


def test_a_torch_save_checkpoint_is_not_read_as_a_mask_file(tmp_path):
    model = _net(4)
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match=rf"{path} is not a safetensors file \(a torch.save checkpoint\?\): .*header.*"
                                         r"A mask file is the .safetensors file modmask writes; pass that one"):
        Masks.load(path, model)
    with pytest.raises(ValueError, match=r"is not a safetensors file.*A logits file is"):
        read_metadata(path, "logits")


def test_other_files_that_are_not_mask_files(tmp_path):
    masks = _ones(_net(4))
    masks.save(tmp_path / "m.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((tmp_path / "m.safetensors").read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"truncated.safetensors is not a safetensors file.*incomplete"):
        Masks.load(truncated)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.safetensors is not a safetensors file"):
        Masks.load(tmp_path / "empty.safetensors")
    with pytest.raises(ValueError, match=r"mask file .* is a directory, not a file"):
        Masks.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"mask file .*missing.safetensors does not exist"):
        Masks.load(tmp_path / "missing.safetensors")
    assert read_metadata(tmp_path / "m.safetensors", "mask")["format"] == "modmask.masks/1"


def test_a_logits_file_is_not_a_mask_file_and_says_how_to_load_it(tmp_path):
    from modmask import TrainedMask

    TrainedMask({"0.weight": torch.randn(4, 3)}).save(tmp_path / "add.safetensors")
    with pytest.raises(ValueError, match=r"is not a modmask mask file \(format 'modmask.logits.*TrainedMask.load"):
        Masks.load(tmp_path / "add.safetensors")


def _m(**rows):
    return Masks({n: torch.tensor(v, dtype=torch.bool) for n, v in rows.items()})


A = _m(w=[1, 1, 0, 0], v=[1, 0])
LONGER = _m(w=[1, 1, 0, 0, 0], v=[1, 0])  # the same tensors of a larger model
WIDE = _m(w=[[1, 1, 0, 0]], v=[1, 0])  # would broadcast against [4] without a check


@pytest.mark.parametrize("other", [LONGER, WIDE], ids=["larger", "broadcastable"])
def test_masks_of_other_shapes_are_refused_by_every_comparison(other):
    shape = re.escape(f"tensor 'w' has shape (4,) in masks 'a' but {tuple(other['w'].shape)!r}")
    both = {"a": A, "b": other}
    for compare in (lambda: shared_fraction(both, "a"), lambda: shared_fraction(both, "a", per_layer=True),
                    lambda: exclusive(both, "a"), lambda: shared_fraction_chance(both, "a")):
        with pytest.raises(ValueError, match=rf"masks 'a' and 'b' do not match: {shape} in 'b' \(masks of different "
                                             rf"models\?\); compare masks of one model"):
            compare()
    for combine in (lambda: A | other, lambda: A & other, lambda: A - other, lambda: union([A, other])):
        with pytest.raises(ValueError, match=r"the left masks and the right masks do not match: tensor 'w' has shape"):
            combine()
    with pytest.raises(ValueError, match=r"tensor 'w' has shape \(4,\) in masks a but"):
        iou(A, other)


def test_comparisons_name_a_missing_label_and_need_two_masks():
    with pytest.raises(ValueError, match=r"no mask labelled 'c'; the masks are \['a', 'b'\]: pass one of these"):
        shared_fraction({"a": A, "b": A}, "c")
    with pytest.raises(ValueError, match=r"mask 'a' has no other mask to share weights with: pass at least two"):
        exclusive({"a": A}, "a")
    with pytest.raises(ValueError, match="the union of no masks is undefined"):
        union([])
