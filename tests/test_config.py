"""GPConfig's defaults are decided in one place (BY_DIMENSION and the dataclass); the YAML mirrors them."""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from volseg.config import BY_DIMENSION, GPConfig, by_dimension
from volseg.errors import InputError

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _yaml_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def test_default_yaml_gives_the_dataclass_defaults():
    section = yaml.safe_load(DEFAULT_YAML.read_text())["gp"]
    assert sorted(section) == sorted(f.name for f in fields(GPConfig))
    assert GPConfig.from_yaml(DEFAULT_YAML) == GPConfig()


def test_default_yaml_comments_state_the_per_dimension_defaults():
    """A null in the YAML is resolved by BY_DIMENSION; the comment on its line says to what."""
    # a setting's comment: on its line and the comment-only lines under it
    found = re.finditer(r"^ +(\w+): *null *#(.*(?:\n +#.*)*)", DEFAULT_YAML.read_text(), re.M)
    lines = {m.group(1): " ".join(part.strip(" #") for part in m.group(2).splitlines()) for m in found}
    for name, (flat, volume) in BY_DIMENSION.items():
        setting = name.removesuffix("_one_scale")
        assert setting in lines, f"{setting} is not null in default.yaml"
        said = f"2D {_yaml_text(flat)}, volumes {_yaml_text(volume)}"
        assert said in lines[setting], f"default.yaml's comment on {setting} should say {said!r}"


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_for_methods_read_the_table(ndim):
    cfg = GPConfig()
    assert cfg.kernel_for(ndim) == by_dimension("kernel", ndim)
    assert cfg.spatial_fraction_for(ndim) == by_dimension("spatial_fraction", ndim)
    assert cfg.noise_per_point_for(ndim) is by_dimension("noise_per_point", ndim)
    assert cfg.edge_strength_for(ndim) == by_dimension("edge_strength", ndim)
    assert cfg.replace(kernel="rbf").spatial_fraction_for(ndim) == by_dimension("spatial_fraction_one_scale", ndim)


def test_per_dimension_values_are_unchanged():
    """The values the methods gave before the table existed (behaviour must not move with the refactor)."""
    two, three = GPConfig(), GPConfig()
    assert (two.spatial_fraction_for(2), three.spatial_fraction_for(3)) == (0.14, 0.07)
    rbf = GPConfig(kernel="rbf")
    assert (rbf.spatial_fraction_for(2), rbf.spatial_fraction_for(3)) == (0.1, 0.05)
    assert (two.edge_strength_for(2), two.edge_strength_for(3)) == (15.0, 0.0)
    assert (two.noise_per_point_for(2), two.noise_per_point_for(3)) == (False, True)
    assert two.kernel_for(2) == two.kernel_for(3) == "multiscale"


def test_explicit_settings_win_over_the_table():
    cfg = GPConfig(spatial_fraction=0.2, edge_strength=3.0, noise_per_point=False, kernel="matern32")
    assert (cfg.spatial_fraction_for(3), cfg.edge_strength_for(2), cfg.noise_per_point_for(3)) == (0.2, 3.0, False)
    assert cfg.kernel_for(2) == "matern32"


def test_volume_fill_config_selects_the_sum_latent():
    """configs/volume_fill.yaml is the documented way to the GMRF + GP sum for volumes."""
    cfg = GPConfig.from_yaml(DEFAULT_YAML.parent / "volume_fill.yaml")
    assert cfg.latent_for(3) == "sum" and cfg.short_share == 0.8 and cfg.gmrf_share == 0.5
    assert {k: v for k, v in cfg.to_dict().items() if k not in ("latent", "short_share")} == \
        {k: v for k, v in GPConfig().to_dict().items() if k not in ("latent", "short_share")}


def test_fill_organ_config_anchors_the_gmrf_share():
    """configs/fill_organ.yaml raises the GMRF's share around each object's first click and tightens the
    appearance factor; nothing else differs from the defaults."""
    cfg = GPConfig.from_yaml(DEFAULT_YAML.parent / "fill_organ.yaml")
    assert (cfg.gmrf_anchor_share, cfg.gmrf_appearance) == (1.5, 4.0)
    changed = {k for k, v in cfg.to_dict().items() if v != getattr(GPConfig(), k)}
    assert changed == {"gmrf_anchor_share", "gmrf_appearance"}


def test_whole_number_settings_given_as_floats_become_integers():
    """``Session(seed_points=4.0)`` or ``gmrf_nodes: 5e3`` in YAML: a whole number is accepted, and stored as one."""
    cfg = GPConfig(seed_points=4.0, gmrf_nodes=5e3)
    assert cfg.seed_points == 4 and isinstance(cfg.seed_points, int)
    assert isinstance(cfg.gmrf_nodes, int)
    import numpy as np

    assert type(GPConfig(seed_points=np.int64(3)).seed_points) is int  # a numpy integer from a script
    with pytest.raises(InputError, match="seed_points must be a whole number"):
        GPConfig(seed_points=4.5)


def test_an_unknown_setting_is_named_however_it_arrives():
    """A dict, a YAML file or a change through replace (--option, --set): one InputError naming the setting."""
    with pytest.raises(InputError, match="bogus"):
        GPConfig.from_dict({"bogus": 1})
    with pytest.raises(InputError, match="bogus"):
        GPConfig().replace(bogus=1)


@pytest.mark.parametrize("value", [-0.1, 0.6, "high", None])
def test_hysteresis_outside_its_range_is_named(value):
    with pytest.raises(InputError, match="hysteresis"):
        GPConfig(hysteresis=value)
