import json

import pytest

from modmask import MaskConfig, cli
from modmask.config import ConfigError, build, parse_overrides, resolve
from modmask.launch.catalogue import EXPERIMENTS, experiment_module
from modmask.launch.runner import plan
from modmask.runs.legacy import legacy_keys, upgrade


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_preset_builds_a_valid_config_with_no_setting_left_open(name):
    module = experiment_module(name)
    assert {"smoke", "small", "paper"} <= set(module.PRESETS)
    for preset in module.PRESETS:
        config = resolve(module.Config, module.PRESETS, preset)
        assert isinstance(config, module.Config) and isinstance(config.mask, MaskConfig)
        if name != "dm_math":  # per-module values are filled per module (Config.for_module)
            assert None not in (config.mask.steps, config.mask.beta, config.mask.lr), preset


def test_paper_preset_has_the_papers_settings():
    module = experiment_module("addmul")
    config = resolve(module.Config, module.PRESETS, "paper")
    assert config.hidden == (2000, 2000, 2000, 2000) and config.mask.beta == 1e-4 and config.mask.k == 4
    assert config.mask.steps == 20_000 and config.pretrain_steps == 20_000 and config.mask.lr == 1e-2


def test_per_variant_defaults_are_resolved_into_the_config():
    scan = experiment_module("scan")
    assert resolve(scan.Config, scan.PRESETS, "paper").mask.beta == 3e-5
    transformer = resolve(scan.Config, scan.PRESETS, "paper-transformer")
    assert (transformer.mask.beta, transformer.dropout, transformer.teacher_forcing) == (6e-4, 0.1, 1.0)
    # a value given explicitly wins over the variant's
    assert resolve(scan.Config, scan.PRESETS, "paper-transformer", {"mask.beta": 1e-3}).mask.beta == 1e-3
    doubleadd = experiment_module("doubleadd")
    assert resolve(doubleadd.Config, doubleadd.PRESETS, "paper").mask.beta == 4e-4
    assert resolve(doubleadd.Config, doubleadd.PRESETS, "small-lstm").mask.beta == 1e-4
    cifar = experiment_module("cifar")
    resnet = resolve(cifar.Config, cifar.PRESETS, "paper-resnet")
    assert (resnet.mask.steps, resnet.mask.lr, resnet.mask_batch_size, resnet.mask.biases) == (30_000, 0.03, 256, True)
    assert resolve(cifar.Config, cifar.PRESETS, "paper").mask_batch_size == 128
    dm = experiment_module("dm_math")
    module = resolve(dm.Config, dm.PRESETS, "paper").for_module("algebra__linear_1d")
    assert (module.mask.beta, module.mask.steps, module.mask_batch_size, module.mask.reg_batch_size) == \
        (1e-6, 50_000, 400, None)
    original = resolve(dm.Config, dm.PRESETS, "paper", {"original_regulariser_batch": True})
    assert original.for_module("algebra__linear_1d").mask.reg_batch_size == 512


def test_overrides_take_dotted_keys_and_the_old_flat_names():
    module = experiment_module("addmul")
    aliases = legacy_keys("addmul")
    values = parse_overrides(module.Config, ["mask.beta=3e-4", "hidden=400,400,200", "compiled=true",
                                             "mask_steps=7"], aliases)
    assert values == {"mask.beta": 3e-4, "hidden": (400, 400, 200), "execution.compiled": True, "mask.steps": 7}
    config = resolve(module.Config, module.PRESETS, "smoke", values)
    assert (config.mask.beta, config.execution.compiled, config.mask.steps, config.mask.k) == (3e-4, True, 7, 4)
    # how a step runs moved from `mask` to `execution`: the old dotted keys still work
    assert parse_overrides(module.Config, ["mask.joint=false", "mask.samples_per_pass=2"], aliases) == \
        {"execution.joint": False, "execution.samples_per_pass": 2}
    # permuted MNIST's flat `steps` and `lr` were its mask settings
    mnist = experiment_module("permuted_mnist")
    assert parse_overrides(mnist.Config, ["steps=5", "lr=0.1"], legacy_keys("permuted_mnist")) == \
        {"mask.steps": 5, "mask.lr": 0.1}
    with pytest.raises(ConfigError, match="unknown config key 'betta'; valid keys: model, hidden"):
        parse_overrides(module.Config, ["betta=1"])
    with pytest.raises(ConfigError, match="mask.steps expects a int, not 'many'"):
        parse_overrides(module.Config, ["mask_steps=many"], aliases)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        resolve(module.Config, module.PRESETS, "huge")


@pytest.mark.parametrize("values, message", [({"mask.steps": -5}, "steps must be positive"),
                                             ({"mask.k": 0}, "k must be positive"),
                                             ({"execution.path": "fast"}, "path must be one of"),
                                             ({"pretrain_steps": 0}, "pretrain_steps=0: must be positive")])
def test_bad_values_are_refused_when_the_config_is_resolved(values, message):
    module = experiment_module("addmul")
    with pytest.raises(ConfigError, match=message):
        resolve(module.Config, module.PRESETS, "smoke", values)


def test_bad_values_stop_the_command_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "addmul", "--preset", "smoke", "--set", "mask_steps=-5", "--out", str(out)]) == 2
    assert "steps must be positive" in capsys.readouterr().err
    assert not (out / "seed-0").exists()
    assert cli.main(["run", "addmul", "--preset", "smoke", "--seeds", "0", "--out", str(out)]) == 2
    assert "seeds must be one or more" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.main(["run", "addmul", "--preset", "smoke", "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err


def test_a_run_directory_of_modmask_0_1_is_accepted_for_resume(tmp_path):
    """config.json of before the mask settings were nested: flat keys, per-variant None."""
    scan = experiment_module("scan")
    new = plan("scan", "smoke", {}, tmp_path / "new").described
    old = {k: v for k, v in new.items() if k != "mask"}
    old.update(beta=None, mask_lr=1e-2, mask_steps=8, k=4)  # as modmask 0.1 wrote it
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    plan("scan", "smoke", {}, tmp_path / "old")  # no error: the same settings
    with pytest.raises(ValueError, match=r"other settings \(mask.steps\)"):
        plan("scan", "smoke", {"mask.steps": 9}, tmp_path / "old")
    assert upgrade(old)["mask"]["steps"] == 8
    assert build(scan.Config, upgrade(old)).mask.beta == 3e-5


def test_an_old_config_json_with_execution_settings_in_the_mask_group_is_upgraded():
    old = {"experiment": "addmul", "mask": {"beta": 1e-4, "joint": False, "path": "sequential"}}
    assert upgrade(old) == {"experiment": "addmul", "mask": {"beta": 1e-4},
                            "execution": {"joint": False, "path": "sequential"}}
