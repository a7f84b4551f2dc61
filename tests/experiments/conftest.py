"""Shared fixtures of the experiment tests."""

import numpy as np
import pytest
from PIL import Image

from modmask.data.cifar import CLASSES


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A CIFAR-10-like image folder: 60 train and 10 test 32x32 PNGs per class, each class with its
    own colour, under <root>/CIFAR-10/{train,test}/<class>/."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.RandomState(0)
    for split, count in (("train", 60), ("test", 10)):
        for index, name in enumerate(CLASSES):
            folder = root / "CIFAR-10" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.randint(0, 80, (32, 32, 3))
                pixels[:, :, index % 3] += 25 * index
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def kill_joint_stage_after_first_checkpoint(monkeypatch):
    """While active, a joint mask stage writes its first checkpoint, then dies (KeyboardInterrupt);
    call the returned `undo()` to train normally again."""
    from modmask.runs import stage

    real = stage.train_masks

    def dies_after_the_first_checkpoint(*args, checkpoint=None, **kwargs):
        def save_then_die(step, state):
            checkpoint(step, state)
            raise KeyboardInterrupt
        return real(*args, checkpoint=save_then_die, **kwargs)

    monkeypatch.setattr(stage, "train_masks", dies_after_the_first_checkpoint)
    return monkeypatch.undo
