import pytest

from modmask.experiments import registry
from modmask.experiments.config import ConfigError, parse_overrides, resolve


@pytest.mark.parametrize("name", list(registry.EXPERIMENTS))
def test_every_preset_builds_a_valid_config(name):
    module = registry.get(name)
    assert {"smoke", "small", "paper"} <= set(module.PRESETS)
    for preset in module.PRESETS:
        config = resolve(module.Config, module.PRESETS, preset)
        assert isinstance(config, module.Config)


def test_paper_preset_has_the_papers_settings():
    module = registry.get("addmul")
    config = resolve(module.Config, module.PRESETS, "paper")
    assert config.hidden == (2000, 2000, 2000, 2000) and config.beta == 1e-4 and config.k == 4
    assert config.mask_steps == 20_000 and config.pretrain_steps == 20_000 and config.mask_lr == 1e-2


def test_overrides_are_typed_and_checked():
    module = registry.get("addmul")
    values = parse_overrides(module.Config, ["beta=3e-4", "hidden=400,400,200", "compiled=true"])
    assert values == {"beta": 3e-4, "hidden": (400, 400, 200), "compiled": True}
    with pytest.raises(ConfigError, match="unknown config key 'betta'; valid keys: model, hidden"):
        parse_overrides(module.Config, ["betta=1"])
    with pytest.raises(ConfigError, match="mask_steps expects a int, not 'many'"):
        parse_overrides(module.Config, ["mask_steps=many"])
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        resolve(module.Config, module.PRESETS, "huge")
