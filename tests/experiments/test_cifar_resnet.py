"""The CIFAR-10 ResNet variant (paper §2.6): the architecture, its masks on the vmap path, the
crop-and-flip augmentation, SGD pretraining with learning-rate drops, the config, and the
smoke-resnet preset end to end on a tiny generated image folder."""

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from modmask import cli
from modmask.core.selection import select_parameters
from modmask import Execution, MaskConfig, MaskTrainer
from modmask.data.augment import AugmentedBatches, random_crop_flip
from modmask.data.cifar import CLASSES, ImageClassData
from modmask.data.sampling import RandomBatches
from modmask.experiments import cifar
from modmask.config import resolve, to_json
from modmask.experiments.pretrain import pretrain, step_lr
from modmask.runs import RunDir
from modmask.models import CifarResNet


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet110_shapes_and_parameter_count():
    model = CifarResNet()
    # stem 3*16*9 + BN 32; stage 1: 18 blocks of 2 * 16*16*9 + BN 64 = 4,672; stage 2: first block
    # 16*32*9 + 32*32*9 + BN 128 + shortcut 16*32 + BN 64 = 14,528, then 17 of 2 * 32*32*9 + 128 =
    # 18,560; stage 3: 32*64*9 + 64*64*9 + 256 + 32*64 + 128 = 57,728, then 17 of 73,984; Linear 650.
    expected = 432 + 32 + 18 * 4_672 + 14_528 + 17 * 18_560 + 57_728 + 17 * 73_984 + 650
    assert expected == 1_730_714 and _count(model) == expected
    assert model.depth == 110
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 18 * 2 + 2  # 109 3x3 convolutions and 2 shortcut convolutions
    assert all(c.bias is None for c in convs)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert _count(CifarResNet(blocks=3)) == 272_474  # ResNet-20, the same sums with 3 blocks per stage
    wide = CifarResNet(blocks=1, widths=(8, 16, 24))  # wider or narrower stages: the same sums
    # stem 3*8*9 + BN 16; block 2 * 8*8*9 + BN 32; 8*16*9 + 16*16*9 + 64 + shortcut 8*16 + 32;
    # 16*24*9 + 24*24*9 + 96 + 16*24 + 48; Linear 24*10 + 10
    assert _count(wide) == 216 + 16 + 1_184 + 3_680 + 9_168 + 250
    with torch.no_grad():
        assert wide.eval()(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_resnet_stages_halve_the_resolution_and_init_follows_the_paper():
    model = CifarResNet(blocks=2)
    x = F.relu(model.norm(model.conv(torch.randn(2, 3, 32, 32))))
    sizes = []
    for stage in model.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert isinstance(model.stages[0][0].shortcut, torch.nn.Identity)
    assert isinstance(model.stages[1][0].shortcut, torch.nn.Sequential)
    assert isinstance(model.stages[1][1].shortcut, torch.nn.Identity)
    weight = CifarResNet(blocks=18).stages[2][5].conv2.weight  # 64*64*9 values
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.02)
    norm = model.stages[1][0].norm1
    assert torch.equal(norm.weight, torch.ones(32)) and torch.equal(norm.bias, torch.zeros(32))


def _tiny_resnet():
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = CifarResNet(classes=3, blocks=1)
    with torch.no_grad():  # non-trivial running statistics and affine parameters for eval mode
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_resnet_masks_everything_and_vmap_agrees_with_the_sequential_path():
    model = _tiny_resnet()
    names = select_parameters(model, biases=True, norms=True)
    assert names == [n for n, _ in model.named_parameters()]  # BN affine and the output bias included
    x, y = torch.randn(8, 3, 12, 12), torch.randint(0, 3, (8,))
    results = {}
    for path in ("vmap", "sequential"):
        config = MaskConfig(k=4, grad_clip=None, biases=True, norms=True)
        trainer = MaskTrainer(model, F.cross_entropy, config, Execution(path=path), seed=5).prepare([(x, y)])
        losses = trainer.step([(x, y)])[0]
        assert trainer.path == path
        results[path] = (losses["loss"], {n: l.grad.clone() for n, l in trainer.logits.items()})
    (loss_v, grads_v), (loss_s, grads_s) = results["vmap"], results["sequential"]
    assert torch.allclose(loss_v, loss_s, atol=1e-5)
    for name in grads_v:
        assert torch.allclose(grads_v[name], grads_s[name], atol=1e-5), name
    assert grads_v["stages.1.0.norm1.weight"].abs().sum() > 0 and grads_v["output.bias"].abs().sum() > 0
    assert not model.training  # BN stayed in eval mode: the running statistics were used, not changed


def test_crop_flip_keeps_the_shape_and_pads_with_the_fill():
    images = torch.randn(64, 3, 8, 8)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=4, fill=fill)
    assert out.shape == images.shape
    # a crop shifted by 4 in both directions shows only padding in some corner pixel
    for c in range(3):
        assert (out[:, c] == fill[c]).any()
    unpadded = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(unpadded, images)]
    same = [torch.equal(o, i) for o, i in zip(unpadded, images)]
    assert all(f or s for f, s in zip(flipped, same)) and 10 < sum(flipped) < 54


def test_crop_flip_matches_a_crop_by_hand():
    images = torch.arange(5 * 2 * 6 * 6, dtype=torch.float32).view(5, 2, 6, 6)
    out = random_crop_flip(images, torch.Generator().manual_seed(7), padding=2, fill=-1.0)
    generator = torch.Generator().manual_seed(7)  # the same draws: offsets [n, 2], then flips [n]
    offsets = torch.randint(0, 5, (5, 2), generator=generator)
    flips = torch.rand(5, generator=generator) < 0.5
    padded = F.pad(images, (2, 2, 2, 2), value=-1.0)
    for i in range(5):
        top, left = offsets[i].tolist()
        crop = padded[i, :, top:top + 6, left:left + 6]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] else crop)


def _images(n=64, seed=0):
    rng = np.random.RandomState(seed)
    images = torch.from_numpy(rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8))
    labels = torch.from_numpy(rng.randint(0, 3, n).astype(np.int64))
    return ImageClassData(images, labels, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def _augmented(data, seed=1):
    return AugmentedBatches(RandomBatches(data, 8, seed), seed + 100, fill=-data.mean.view(3) / data.std.view(3))


def test_augmented_batches_are_seeded_and_resume_from_their_state():
    data = _images()
    first, second = _augmented(data), _augmented(data)
    for _ in range(2):
        a, b = next(first), next(second)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(next(_augmented(data, seed=2))[0], next(_augmented(data))[0])
    state = first.state()
    expected = [next(first) for _ in range(3)]
    resumed = _augmented(data, seed=9)
    resumed.load_state(state)
    for (x, y), (rx, ry) in zip(expected, (next(resumed) for _ in range(3))):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_step_lr_drops_by_ten_at_the_given_steps():
    drops_at = (32_000, 48_000)
    assert step_lr(0, 0.1, lr_drops=drops_at) == 0.1
    assert step_lr(31_999, 0.1, lr_drops=drops_at) == 0.1
    assert step_lr(32_000, 0.1, lr_drops=drops_at) == pytest.approx(0.01)
    assert step_lr(47_999, 0.1, lr_drops=drops_at) == pytest.approx(0.01)
    assert step_lr(48_000, 0.1, lr_drops=drops_at) == pytest.approx(0.001)
    assert step_lr(63_999, 0.1, lr_drops=drops_at) == pytest.approx(0.001)
    assert step_lr(4, 1e-3, warmup=10) == pytest.approx(5e-4)  # warm-up as before
    assert tuple(int(64_000 * f) for f in cifar.RESNET_LR_DROPS) == drops_at


def _pretrain_sgd(run, loss_fn=F.cross_entropy, steps=10):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CifarResNet(classes=3, blocks=1)
    return pretrain(model, _augmented(_images()), loss_fn, run, steps=steps, lr=0.1, grad_clip=None,
                    checkpoint_every=3, progress=False, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                    lr_drops=(4, 7))


def test_sgd_pretraining_follows_a_hand_written_loop(tmp_path):
    trained = _pretrain_sgd(RunDir(tmp_path))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CifarResNet(classes=3, blocks=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batches = _augmented(_images())
    model.train()
    for step in range(10):
        x, y = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = 0.1 if step < 4 else 0.01 if step < 7 else 0.001
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), trained.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_interrupted_sgd_pretraining_with_augmentation_resumes_to_the_same_weights(tmp_path):
    reference = _pretrain_sgd(RunDir(tmp_path / "a"))
    calls = []

    def dies_at_step_8(outputs, targets):
        calls.append(1)
        if len(calls) == 9:  # after the checkpoint at 6 and past the second drop (7)
            raise KeyboardInterrupt
        return F.cross_entropy(outputs, targets)

    run = RunDir(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _pretrain_sgd(run, dies_at_step_8)
    assert torch.load(run.path / "checkpoints/pretrain-partial.pt", weights_only=True)["step"] == 6
    resumed = _pretrain_sgd(run)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name  # weights and BN running statistics


def test_unknown_optimizer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd'"):
        pretrain(CifarResNet(blocks=1), iter(()), F.cross_entropy, RunDir(tmp_path), steps=1, optimizer="rmsprop")


def test_configs_resolve_per_model_defaults_and_keep_the_cnn_values():
    paper = resolve(cifar.Config, cifar.PRESETS, "paper-resnet")
    assert (paper.model, paper.resnet_blocks, paper.batch_size, paper.mask_batch_size, paper.mask.k) == \
        ("resnet", 18, 128, 256, 4)
    assert (paper.pretrain_steps, paper.lr, paper.mask.steps, paper.mask.lr, paper.mask.beta, paper.mask.grad_clip) == \
        (64_000, 0.1, 30_000, 0.03, 2e-5, 1.0)
    # the CNN keeps its values
    small = to_json(resolve(cifar.Config, cifar.PRESETS, "small"))
    mask = small.pop("mask")
    assert small.pop("execution") == to_json(Execution())  # how steps run: the defaults
    assert small.pop("curves")["enabled"]  # the analysis: curves over density
    assert small == {"model": "cnn", "resnet_blocks": 18, "mask_batch_size": 128, "dropout": True,
                     "original_regulariser_batch": False, "batch_size": 128, "pretrain_steps": 3000, "lr": 0.001,
                     "grad_clip": 1.0, "stability_classes": [3, 5], "random_draws": 3, "train_images": 50000,
                     "data": None, "source": None, "checkpoint_every": 2000}
    assert {k: mask[k] for k in ("steps", "lr", "beta", "k", "grad_clip", "biases", "norms", "reg_batch_size")} == \
        {"steps": 300, "lr": 0.03, "beta": 0.0003, "k": 4, "grad_clip": 1.0, "biases": True, "norms": True,
         "reg_batch_size": None}
    smoke = resolve(cifar.Config, cifar.PRESETS, "smoke")
    assert smoke.mask_batch_size == smoke.batch_size == 32 and smoke.mask.beta == 3e-4
    overridden = resolve(cifar.Config, cifar.PRESETS, "paper", {"model": "resnet", "mask.beta": 1e-4})
    assert overridden.mask.beta == 1e-4 and overridden.mask.lr == 0.03
    with pytest.raises(ValueError, match="model must be one of cnn, resnet"):
        cifar.Config(model="vgg")


def test_cifar_smoke_resnet_end_to_end(image_folder, tmp_path):
    assert cli.main(["run", "cifar", "--preset", "smoke-resnet", "--out", str(tmp_path), "--quiet",
                     "--set", f"data={image_folder}"]) == 0
    summary = json.loads((tmp_path / "results.json").read_text())
    agg = summary["aggregate"]
    assert agg["classes"] == CLASSES and len(agg["removal"]) == 10
    assert agg["model"] == "resnet" and agg["evaluated_on"] == "test"
    assert 0 <= agg["stability_iou"]["mean"] <= 1
    assert agg["half_mask"]["layers_late"][-2:] == ["output.weight", "output.bias"]
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# CIFAR-10 class removal: ResNet-8") and "official test set" in report
    # curves of the first two classes, among every masked tensor but the output layer (BatchNorm gains included)
    assert set(agg["curves"]) == {"airplane", "airplane-others", "automobile", "automobile-others"}
    assert "stages.0.0.norm1.weight" in agg["curves"]["airplane"]["subset"]
    assert "## Curves over density" in report and "| mask without automobile |" in report
    from modmask import TrainedMask
    reference = TrainedMask.load(tmp_path / "seed-0/masks/reference.safetensors").logits
    assert "stages.0.0.norm1.bias" in reference and "output.bias" in reference
    without = TrainedMask.load(tmp_path / "seed-0/masks/without-3.safetensors").logits
    assert "output.weight" not in without and "conv.weight" in without
    # BN buffers were saved with the pretrained model
    from safetensors.torch import load_file
    weights = load_file(tmp_path / "seed-0/checkpoints/pretrained.safetensors")
    assert "stages.2.0.shortcut.1.running_var" in weights
