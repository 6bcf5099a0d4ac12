"""The benchmark configs refuse bad values up front (``__post_init__``), naming the field and the value.

No training: every check here runs before a benchmark touches its corpus or a model.
"""

import dataclasses

import pytest

from recruit.benchmarks import (
    bdh,
    bdh_compare,
    bdh_memory,
    bdh_sparsity,
    bdh_speed,
    checks,
    fff_distil,
    fff_mlm,
    fff_model,
    fff_quality,
    fff_speed,
)
from recruit.cli import main

PRESET_CONFIGS = {  # built inside the test, so that a check too strict for a default fails there
    "bdh": lambda: [bdh.QUICK, bdh.BDHBenchConfig()],
    "bdh-compare": lambda: [bdh_compare.QUICK, bdh_compare.GPU, bdh_compare.CompareConfig()],
    "bdh-memory": lambda: [bdh_memory.QUICK, bdh_memory.MemoryConfig()],
    "bdh-sparsity": lambda: [bdh_sparsity.QUICK, bdh_sparsity.SparsityConfig()],
    "bdh-speed": lambda: [bdh_speed.QUICK, bdh_speed.CPU, bdh_speed.SpeedConfig()],
    "fff-distil": lambda: [fff_distil.QUICK, fff_distil.DistilConfig()],
    "fff-mlm": lambda: [fff_mlm.QUICK, fff_mlm.MLMConfig()],
    "fff-quality": lambda: [fff_quality.QUICK, fff_quality.QualityConfig()],
    "fff": lambda: [fff_speed.Selection(), *fff_speed.QUICK_CASES, *fff_speed.CPU_CASES, *fff_speed.GPU_CASES],
    "fff-model": lambda: [*fff_model.QUICK_SHAPES, *fff_model.DEFAULT_SHAPES],
}


@pytest.mark.parametrize("name", PRESET_CONFIGS)
def test_shipped_configs_pass_their_own_checks(name):
    for cfg in PRESET_CONFIGS[name]():
        assert dataclasses.replace(cfg) == cfg  # replace() runs __post_init__ again


# (config, fields to replace, what the error must say)
REFUSED = [
    # 1. bdh-compare: (BDH, GPT) pairs of known presets
    (bdh_compare.QUICK, {"sizes": (("gpt-nano", "bdh-nano"),)}, r"sizes\[0\] must be a \(BDH, GPT\).*swapped"),
    (bdh_compare.QUICK, {"sizes": (("bdh-nano", "nosuch"),)}, r"sizes\[0\]\[1\] .*GPT model preset.*'nosuch'"),
    (bdh_compare.QUICK, {"sizes": (("bdh-nano", "bdh-mini"),)}, r"sizes\[0\]\[1\] .*GPT model preset.*'bdh-mini'"),
    (bdh_compare.QUICK, {"sizes": (("gpt-mini", "gpt-nano"),)}, r"sizes\[0\]\[0\] .*BDH model preset.*'gpt-mini'"),
    (bdh_compare.QUICK, {"sizes": ()}, "sizes must name at least one"),
    (bdh_compare.QUICK, {"seq_len": 128, "tokens": 4096}, r"seq_len \(128\) .*sizes\[0\] 'gpt-nano' \(64 tokens\)"),
    (bdh_compare.QUICK, {"bdh_args": (("impl", "bogus"),)}, "impl must be.*'bogus'"),
    (bdh_compare.QUICK, {"bdh_args": (("nope", 1),)}, "unknown bdh_args.*'nope'"),
    (bdh_compare.QUICK, {"gpt_lr": 0.0}, "gpt_lr must be positive, got 0"),
    (bdh_compare.QUICK, {"bdh_lr": -1e-3}, "bdh_lr must be positive, got -0.001"),
    (bdh_compare.QUICK, {"bdh_lr": float("nan")}, "bdh_lr must be positive, got nan"),
    # 2. bdh: bpb_max_bytes is positive or None (BenchOptions.max_bytes)
    (bdh.QUICK, {"bpb_max_bytes": -4}, "bpb_max_bytes must be positive.*got -4"),
    (bdh.QUICK, {"bpb_max_bytes": 0}, "bpb_max_bytes must be positive.*got 0"),
    (bdh.QUICK, {"bdh_preset": "gpt-nano"}, "bdh_preset must be a BDH model preset.*'gpt-nano'"),
    (bdh.QUICK, {"gpt_preset": "bdh-nano"}, "gpt_preset must be a GPT model preset.*'bdh-nano'"),
    (bdh.QUICK, {"probe_distances": ()}, r"probe_distances must be one or more.*\(\)"),
    (bdh.QUICK, {"probe_distances": (-1,)}, r"probe_distances must be .*>= 0, got \(-1,\)"),
    (bdh.QUICK, {"warmup": -1}, "warmup must be >= 0, got -1"),
    (bdh.QUICK, {"repeats": 0}, "repeats must be positive, got 0"),
    # 3. the equal-budget benches: sizes positive (see also POSITIVE below), tokens at least one batch
    (bdh_compare.QUICK, {"tokens": 100}, r"tokens \(100\) must cover at least one batch \(128\)"),
    # 4. presets of the right family, sizes the models accept
    (bdh_memory.QUICK, {"presets": ("nosuch",)}, r"presets\[0\] must be a model preset.*'nosuch'"),
    (bdh_memory.QUICK, {"presets": ()}, "presets must name at least one"),
    (bdh_memory.QUICK, {"seq_len": 128}, r"seq_len \(128\) .*presets\[1\] 'gpt-nano' \(64 tokens\)"),
    (bdh_memory.QUICK, {"key_len": 0}, "key_len must be positive, got 0"),
    (bdh_memory.QUICK, {"probes": 0}, "probes must be positive, got 0"),
    (bdh_memory.QUICK, {"distances": ()}, "distances must be one or more"),
    (bdh_memory.QUICK, {"distances": (4, -1)}, r"distances must be .*>= 0, got \(4, -1\)"),
    (bdh_memory.QUICK, {"bdh_args": (("activity_l1", -1.0),)}, "activity_l1 must be >= 0, got -1"),
    (bdh_sparsity.QUICK, {"preset": "gpt-nano"}, "preset must be a BDH model preset.*'gpt-nano'"),
    (bdh_sparsity.QUICK, {"preset": "nosuch"}, "preset must be a BDH model preset.*'nosuch'"),
    (bdh_sparsity.QUICK, {"density_windows": 0}, "density_windows must be positive, got 0"),
    (bdh_sparsity.QUICK, {"weights": (float("nan"),)}, r"weights must be positive penalty weights, got \(nan,\)"),
    (bdh_sparsity.QUICK, {"seq_len": 512, "tokens": 4096}, r"seq_len \(512\) .*preset 'bdh-nano' \(256 tokens\)"),
    (fff_quality.QUICK, {"preset": "bdh-nano"}, "preset must be a GPT model preset.*'bdh-nano'"),
    (fff_quality.QUICK, {"fff_trees": 0}, "fff_trees must be positive, got 0"),
    (fff_quality.QUICK, {"forests": ((40, 1),)}, r"forests\[0\]: FFF depth must be in 0\.\.30, got 40"),
    (fff_quality.QUICK, {"forests": ((3, 0),)}, r"forests must be \(depth >= 1, trees >= 1\) pairs"),
    (fff_quality.QUICK, {"seq_len": 128}, r"seq_len \(128\) .*preset 'gpt-nano' \(64 tokens\)"),
    (fff_distil.QUICK, {"forests": ((40, 1),)}, r"forests\[0\]: FFF depth must be in 0\.\.30, got 40"),
    (fff_distil.QUICK, {"heads": 3}, r"hidden \(32\) must be a multiple of heads \(3\)"),
    (fff_distil.QUICK, {"hidden": 30}, r"hidden \(30\) .* even quotient"),  # head size 15: RoPE needs pairs
    (fff_distil.QUICK, {"intermediate": 0}, "intermediate must be positive, got 0"),
    (fff_distil.QUICK, {"intermediate": 2**40}, "intermediate 1099511627776: FFF depth must be in 0..30"),
    (fff_distil.QUICK, {"seed": -1}, "seed must be >= 0, got -1"),
    (fff_mlm.QUICK, {"heads": 3}, r"hidden \(32\) must be a multiple of heads \(3\)"),
    (fff_mlm.QUICK, {"intermediate": 0}, "intermediate must be positive, got 0"),
    (fff_mlm.QUICK, {"intermediate": 2**40}, "intermediate 1099511627776: FFF depth must be in 0..30"),
    (fff_mlm.QUICK, {"seed": -1}, "seed must be >= 0, got -1"),
    # 5. bdh-speed: compile modes torch knows; extra modes need a form other than the reference
    (bdh_speed.QUICK, {"extra_modes": ("bogus",)}, "extra_modes must be torch.compile modes .*'bogus'"),
    (bdh_speed.QUICK, {"extra_modes": ("max-autotune",), "impls": ("reference",)}, "impls has only 'reference'"),
    (bdh_speed.QUICK, {"preset": "gpt-nano"}, "preset must be a BDH model preset.*'gpt-nano'"),
    (bdh_speed.QUICK, {"warmup": -1}, r"warmup must be >= 0 .*warmup=-1"),
    (bdh_speed.QUICK, {"batch": 0}, "batch must be positive, got 0"),
    # the fixed-case benches' dataclasses
    (fff_speed.Selection(), {"hidden": (64, 0)}, r"hidden must be positive, got \(64, 0\)"),
    (fff_speed.Selection(), {"batches": (-1,)}, r"batches must be positive, got \(-1,\)"),
    (fff_speed.QUICK_CASES[0], {"depth": 31}, "FFF depth must be in 0..30, got 31"),
    (fff_speed.QUICK_CASES[0], {"trees": 0}, "FFF n_trees must be positive, got 0"),
    (fff_speed.QUICK_CASES[0], {"batch": 0}, "batch must be positive, got 0"),
    (fff_model.QUICK_SHAPE, {"depth": 31}, "FFF depth must be in 0..30, got 31"),
]
POSITIVE = [  # (config, fields that must be > 0): a zero divides by zero or trains / scores nothing
    (bdh_compare.QUICK, ("seq_len", "batch_size", "tokens", "eval_bytes")),
    (bdh_memory.QUICK, ("seq_len", "batch_size", "tokens", "eval_bytes", "lr")),
    (bdh_sparsity.QUICK, ("seq_len", "batch_size", "tokens", "eval_bytes", "lr")),
    (fff_quality.QUICK, ("seq_len", "batch_size", "tokens", "eval_bytes", "lr")),
    (fff_mlm.QUICK, ("seq_len", "batch_size", "tokens", "lr", "hidden", "layers", "heads", "eval_windows")),
    (fff_distil.QUICK, ("seq_len", "batch_size", "tokens", "lr", "layers", "heads", "record_windows", "distil_steps",
                        "finetune_tokens", "eval_windows")),
]  # fmt: skip
REFUSED += [(cfg, {f: 0}, f"{f} must be positive, got 0") for cfg, fields in POSITIVE for f in fields]


def _id(x) -> str:
    """A test id: the config's class and the fields it replaces."""
    return type(x).__name__ if dataclasses.is_dataclass(x) else ",".join(x) if isinstance(x, dict) else "refused"


@pytest.mark.parametrize(("cfg", "fields", "match"), REFUSED, ids=_id)
def test_config_refuses(cfg, fields, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(cfg, **fields)


def test_accepted_edge_values():
    """What the checks must still let through: None for bpb_max_bytes, a known compile mode, a BDH-only run."""
    assert dataclasses.replace(bdh.QUICK, bpb_max_bytes=None).bpb_max_bytes is None
    assert dataclasses.replace(bdh_speed.QUICK, extra_modes=("max-autotune",)).extra_modes == ("max-autotune",)
    assert set(checks.COMPILE_MODES) <= set(checks.compile_modes())
    assert dataclasses.replace(bdh_memory.QUICK, presets=("bdh-nano",), seq_len=128).seq_len == 128
    assert dataclasses.replace(fff_distil.QUICK, forests=((0, 2),)).forests == ((0, 2),)  # depth 0: one node a tree


@pytest.mark.parametrize(
    ("name", "setting", "field"),
    [
        ("bdh-compare", 'sizes=[["gpt-nano","bdh-nano"]]', "sizes"),
        ("bdh-speed", "extra_modes=bogus", "extra_modes"),
        ("bdh", "bpb_max_bytes=0", "bpb_max_bytes"),
        ("fff-mlm", "heads=3", "heads"),
    ],
)
def test_cli_refuses_in_one_line(name, setting, field, tmp_path, capsys):
    assert main(["bench", name, "--quick", "-q", "--out", str(tmp_path), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert f"error: invalid {name} config: " in err and field in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # refused before anything was measured
