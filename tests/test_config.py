import dataclasses
import json

import pytest

from recruit.benchmarks import bdh, bdh_compare, bdh_memory, bdh_sparsity, bdh_speed, fff_distil, fff_mlm, fff_quality
from recruit.config import with_overrides
from recruit.errors import RecruitError

CONFIGS = [
    bdh.BDHBenchConfig(),
    bdh_compare.CompareConfig(),
    bdh_memory.MemoryConfig(),
    bdh_sparsity.SparsityConfig(),
    bdh_speed.SpeedConfig(),
    fff_distil.DistilConfig(),
    fff_mlm.MLMConfig(),
    fff_quality.QualityConfig(),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_bench_config_field_round_trips_through_a_command_line_string(cfg):
    """Each field's value, written as ``--set`` would get it (JSON), comes back equal and of the same type."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        text = value if isinstance(value, str) else json.dumps(value)
        back = getattr(with_overrides(cfg, {f.name: text}), f.name)
        assert back == value and type(back) is type(value), (f.name, value, back)


def test_tuple_fields_take_comma_lists_and_check_items():
    cfg = bdh_speed.SpeedConfig()
    assert with_overrides(cfg, {"contexts": "64, 128"}).contexts == (64, 128)
    assert with_overrides(cfg, {"contexts": "256"}).contexts == (256,)
    assert with_overrides(cfg, {"extra_modes": ""}).extra_modes == ()
    with pytest.raises(RecruitError, match=r"contexts\[1\] must be an int"):
        with_overrides(cfg, {"contexts": "64,lots"})
    with pytest.raises(RecruitError, match="must have 2 items"):
        with_overrides(bdh_compare.CompareConfig(), {"sizes": '[["bdh-mini"]]'})
    with pytest.raises(RecruitError, match="contexts positive"):  # the config's own check still runs
        with_overrides(cfg, {"contexts": "0"})


def test_overrides_name_the_option_left_without_a_value():
    from recruit.config import parse_overrides

    assert parse_overrides(["--lr", "3e-4", "--model.n_layer=2", "--warmup-steps", "-1"]) == {
        "lr": "3e-4", "model.n_layer": "2", "warmup_steps": "-1"}  # fmt: skip
    with pytest.raises(RecruitError, match=r"override --max_steps needs a value \(got the option --out_dir instead\)"):
        parse_overrides(["--max_steps", "--out_dir", "x"])
    with pytest.raises(RecruitError, match="override --lr needs a value$"):
        parse_overrides(["--lr"])
    with pytest.raises(RecruitError, match="unexpected argument 'x'"):
        parse_overrides(["x"])
