import dataclasses

import pytest

from specdistill import losses
from specdistill.config import Config, ConfigError, LossConfig, RolloutConfig, load_config, save_config
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
