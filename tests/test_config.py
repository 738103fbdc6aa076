import dataclasses

import pytest
import torch

from specdistill import losses
from specdistill.config import (Config, ConfigError, LossConfig, MixtureStage, RolloutConfig, load_config, rollout_at,
                                rollout_stages, save_config)
from specdistill.data.mixture import MixtureStream
from specdistill.data.records import Record
from specdistill.engine import AdaptiveTopKPolicy, TopKPolicy
from specdistill.train import loss_params


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides_build_typed_dataclasses(tmp_path):
    p = write(tmp_path, "train:\n  max_steps: 7\n  lr: 1.0e-3\nrollout:\n  strategy: skd\n")
    cfg = load_config(p, ["train.lr=3e-4", "rollout.skd_top_k=5", "data.train=[{task: facts}]",
                          "loss.sparse_top_k=null"])
    assert isinstance(cfg, Config)
    assert cfg.train.max_steps == 7 and cfg.train.lr == pytest.approx(3e-4)  # "3e-4" is a string in YAML 1.1
    assert cfg.rollout.strategy == "skd" and cfg.rollout.skd_top_k == 5 and cfg.loss.sparse_top_k is None
    assert cfg.data.train[0].task == "facts" and cfg.data.train[0].split == "train"


def test_int_is_accepted_for_float_fields():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize("override, expected", [
    (["train.lrr=1"], "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    (["trian.lr=1"], "unknown config key 'trian'; did you mean 'train'?"),
    (["rollout.strategy=skdd"], "rollout.strategy: 'skdd' is not allowed; allowed values: dataset, teacher, student, mixed, skd"),
    (["train.max_steps=abc"], "train.max_steps: expected int, got 'abc'"),
    (["train.max_steps=true"], "train.max_steps: expected int, got True"),
    (["loss.beta=2"], "loss.beta: 2.0 is not allowed; allowed range [0, 1]"),
    (["rollout.gamma=40"], "rollout.gamma: 40; must lie in [1, rollout.max_gamma=16]"),
    (["data.train=[{task: arith, path: x.jsonl}]"], "data.train[0]: give exactly one of 'task', 'path' or 'hub'"),
    (["data.schedule=[{start: 0.5, weights: [1, 2]}]"], "data.schedule[0].weights: need 1 weights"),
    (["train.trackers=[mlflow]"], "train.trackers: 'mlflow' is not allowed"),
    (["model.lora.r=x"], "model.lora.r: expected int, got 'x'"),
    (["trainmax_steps"], "must look like section.field=value"),
    (["rollout.ema=0"], "rollout.ema: 0.0; the weight of the newest token must lie in (0, 1]"),
    (["rollout.policy=adaptive_top_k", "rollout.skd_top_k=80", "rollout.k_max=50"],
     "rollout.skd_top_k: 80 (adaptive_top_k's starting K); must lie in [rollout.k_min=1, rollout.k_max=50]"),
])
def test_errors_name_field_value_and_allowed(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert expected in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    p = write(tmp_path, "train:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown config key 'train\.max_step'; did you mean 'train\.max_steps'"):
        load_config(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["rollout.strategy=mixed", "rollout.lam=0.3", "data.views.few_shot=[{query: q, response: r}]"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(tmp_path / "out" / "config.yaml") == cfg


@pytest.mark.parametrize("old, new", [
    ("rollout.top_k", "rollout.skd_top_k"), ("rollout.min_prob", "rollout.skd_min_prob"),
    ("loss.top_k", "loss.sparse_top_k"),
])
def test_renamed_keys_are_errors_that_name_the_new_key(tmp_path, old, new):
    section, key = old.split(".")
    with pytest.raises(ConfigError, match=f"config key '{old}' was renamed: use '{new}'"):
        load_config(None, [f"{old}=5"])
    with pytest.raises(ConfigError, match=rf"c\.yaml: config key '{old}' was renamed: use '{new}'"):
        load_config(write(tmp_path, f"{section}:\n  {key}: 5\n"))
    assert load_config(None, [f"{new}=5"])  # the new key loads


def test_defaults_shared_with_the_policies_and_losses_agree():
    """One source of defaults: what a config leaves out is what the policy or the loss would use."""
    rollout = RolloutConfig()
    policy = {f.name: f.default for f in dataclasses.fields(AdaptiveTopKPolicy)}
    for key in ("k_min", "k_max", "r_plus", "r_minus", "ema", "entropy_gain"):
        assert getattr(rollout, key) == policy[key], key
    assert rollout.skd_top_k == TopKPolicy.k == policy["k_init"]
    assert rollout.skd_min_prob == TopKPolicy.min_prob == policy["min_prob"]
    assert rollout.ema == 0.1  # the weight of the newest token: 0.9 would make the EMA the last token's outcome
    assert LossConfig().chunk_size == losses.DEFAULT_CHUNK_SIZE == 256
    assert loss_params(LossConfig(name="jsd"))["chunk_size"] == 256  # what the trainer hands the loss


# ---------------------------------------------------------------- rollout.schedule and rollout.mix
def test_rollout_schedule_lays_its_stages_over_the_steps():
    """Stages start at a step or a fraction (0.3 of 10 steps is 3, float noise aside, as for data.schedule); each
    is the top-level settings with its own keys replaced, not the previous stage's."""
    cfg = load_config(None, ["train.max_steps=10", "rollout.temperature=0.7", "rollout.schedule=["
                             "{start: 0.3, strategy: student, temperature: 0.2},"
                             "{step: 6, strategy: mixed, mix: [skd, dataset], lam: 0.2}]"])
    stages = rollout_stages(cfg.rollout, 10)
    assert [(first, r.strategy) for first, r in stages] == [(0, "dataset"), (3, "student"), (6, "mixed")]
    assert [r.temperature for _, r in stages] == [0.7, 0.2, 0.7]
    assert stages[2][1].mix == ["skd", "dataset"] and stages[2][1].lam == 0.2 and stages[1][1].lam == 0.5
    assert [rollout_at(cfg.rollout, s, 10)[0] for s in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert rollout_at(RolloutConfig(), 4, 10) == (0, RolloutConfig())  # no schedule: the top-level settings
    stream = MixtureStream([[Record("a", "q")], [Record("b", "q")]], [1, 0], [MixtureStage(0.3, [0, 1])], 10, 0)
    assert [stream.weights_at(s)[1] for s in (2, 3)] == [0, 1]  # data.schedule switches at the same step


@pytest.mark.parametrize("override, expected", [
    ("rollout.schedule=[{strategy: student}]", "rollout.schedule[0]: give exactly one of 'start'"),
    ("rollout.schedule=[{start: 0.5, step: 3}]", "rollout.schedule[0]: give exactly one of 'start'"),
    ("rollout.schedule=[{start: 1.0}]", "rollout.schedule[0].start: 1.0; allowed range [0, 1)"),
    ("rollout.schedule=[{step: 100}]", "rollout.schedule[0].step: 100; allowed range [0, train.max_steps=100)"),
    ("rollout.schedule=[{step: 50}, {start: 0.2}]", "rollout.schedule[1]: starts at step 20, before the stage listed"),
    ("rollout.schedule=[{step: 5, stratgy: skd}]", "unknown config key 'rollout.schedule[0].stratgy'; did you mean "
                                                    "'rollout.schedule[0].strategy'?"),
    ("rollout.schedule=[{step: 5, top_k: 3}]", "config key 'rollout.schedule[0].top_k' was renamed: use 'skd_top_k'"),
    ("rollout.schedule=[{step: 5, lam: 2}]", "rollout.schedule[0]: rollout.lam: 2.0 is not allowed; allowed range"),
    ("rollout.schedule=[{step: 5, schedule: []}]", "rollout.schedule[0]: a stage cannot have a schedule of its own"),
    ("rollout.mix=[skd, skd]", "rollout.mix: ['skd', 'skd']; give two different strategies"),
    ("rollout.mix=[mixed, dataset]", "rollout.mix[0]: 'mixed' is not allowed; allowed values: dataset, teacher"),
])
def test_rollout_schedule_and_mix_errors_name_the_stage_and_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert expected in str(err.value)


def test_a_schedule_round_trips_through_the_resolved_config(tmp_path):
    cfg = load_config(None, ["rollout.schedule=[{start: 0.5, strategy: mixed, mix: [skd, dataset], lam: 0.25}]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("alpha", [1, 1.0, 1.5, -0.1])
def test_loss_alpha_outside_its_range_is_refused_when_the_config_loads(alpha):
    """skew_fkl / skew_rkl take alpha in [0, 1): alpha = 1 used to pass validation and fail at the first step."""
    with pytest.raises(ConfigError, match=r"loss\.alpha: .* allowed range \[0, 1\)"):
        load_config(overrides=[f"loss.alpha={alpha}", "loss.name=skew_fkl"])
    with pytest.raises(ValueError):  # the loss itself agrees that the value is outside its range
        losses.skew_fkl(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), torch.ones(1, 1, dtype=torch.bool), alpha=alpha)
    assert load_config(overrides=["loss.alpha=0.99", "loss.name=skew_fkl"]).loss.alpha == 0.99
