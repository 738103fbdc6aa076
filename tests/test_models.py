import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ARCHS, save_tiny_model
from specdistill.data.tokenizer import build_tokenizer
from specdistill.errors import UserError
from specdistill.models import (check_same_tokenizer, check_vocab, load_model, load_tokenizer, position_ids_from_mask,
                                resolve_device)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_real_architectures_load_through_from_pretrained_with_chat_template(tiny_models, arch):
    path = tiny_models[arch]
    tok = load_tokenizer(str(path))
    model = load_model(str(path), "float32", "cpu", tok)
    assert type(model).__name__.lower().startswith(arch)
    reference = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([tok(tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False,
                                                    add_generation_prompt=True), add_special_tokens=False).input_ids])
    assert torch.equal(model(ids).logits, reference(ids).logits)
    assert tok.chat_template and tok.padding_side == "left"


def test_dtype_is_configurable(tiny_models):
    model = load_model(str(tiny_models["llama"]), "bfloat16", "cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'float8' is not allowed"):
        load_model(str(tiny_models["llama"]), "float8")


def save_in(path, dtype: torch.dtype, key: str | None = "dtype"):
    """A tiny Llama folder whose weights are saved in `dtype`; its config names the dtype under `key` (torch_dtype:
    as transformers 4.x wrote it; None: not at all)."""
    import json

    save_tiny_model(path)
    AutoModelForCausalLM.from_pretrained(path, dtype=dtype).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    assert config["dtype"] == str(dtype).removeprefix("torch.")  # what save_pretrained records
    value = config.pop("dtype")
    if key is not None:
        config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def test_auto_dtype_is_the_checkpoints_own_and_float32_where_it_names_none(tmp_path):
    bf16 = save_in(tmp_path / "bf16", torch.bfloat16)
    assert next(load_model(bf16).parameters()).dtype == torch.bfloat16  # the default is auto
    assert next(load_model(bf16, "auto").parameters()).dtype == torch.bfloat16
    assert next(load_model(bf16, "float32").parameters()).dtype == torch.float32  # asked for: float32
    old = save_in(tmp_path / "old", torch.float16, key="torch_dtype")
    assert next(load_model(old).parameters()).dtype == torch.float16
    unnamed = save_in(tmp_path / "unnamed", torch.bfloat16, key=None)  # bf16 weights, no dtype in the config
    assert next(load_model(unnamed).parameters()).dtype == torch.float32
    for preset in ("tiny-student", "builtin-teacher"):
        assert next(load_model(preset).parameters()).dtype == torch.float32


def test_a_checkpoint_is_read_onto_its_device_not_moved_there(tiny_models, monkeypatch):
    """from_pretrained gets the target device as device_map, so a CUDA target's weights never sit whole in host
    memory, and nothing moves the model afterwards (here the recorded call loads on the CPU: a later
    `.to("cuda:0")` would fail on a machine without CUDA)."""
    import transformers.integrations

    seen = []
    real = AutoModelForCausalLM.from_pretrained

    def record(path, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(path, **{**kwargs, "device_map": None})

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record)
    model = load_model(str(tiny_models["llama"]), device=torch.device("cuda:0"))
    assert seen == [torch.device("cuda:0")] and next(model.parameters()).device.type == "cpu"
    # Under DeepSpeed ZeRO-3 transformers refuses a device_map: the launcher places the weights.
    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    load_model(str(tiny_models["llama"]), device="cpu")
    assert seen[-1] is None


def test_every_command_takes_dtype_auto_by_default():
    import typing

    from specdistill import models
    from specdistill.cli import build_parser
    from specdistill.config import ModelConfig

    parser = build_parser()
    for command in (["eval", "--model", "m", "--task", "arith"], ["generate", "--model", "m", "--prompt", "hi"],
                    ["bench", "--target", "t", "--draft", "d"]):
        assert parser.parse_args(command).dtype == "auto"
        assert parser.parse_args([*command, "--dtype", "auto"]).dtype == "auto"
        action = next(a for a in parser._subparsers._group_actions[0].choices[command[0]]._actions
                      if a.dest == "dtype")
        assert tuple(action.choices) == models.DTYPE_CHOICES
    hints = typing.get_type_hints(ModelConfig)
    assert typing.get_args(hints["student_dtype"]) == typing.get_args(hints["teacher_dtype"]) == models.DTYPE_CHOICES
    assert (ModelConfig().teacher_dtype, ModelConfig().student_dtype) == ("auto", "float32")


def test_intact_sharded_and_pickled_folders_pass_the_weight_checks(tiny_models, tmp_path):
    """The checks before loading (checkpoint.model_weights_damage) refuse damaged folders only: the same model
    saved in shards with an index, and as a pytorch_model.bin (zip, and torch's old non-zip format), loads and
    gives the original's logits."""
    import shutil

    from specdistill.checkpoint import model_weights_damage

    original = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    ids = torch.tensor([[5, 9, 17, 3]])
    folders = {}
    for name in ("sharded", "zip-bin", "legacy-bin"):
        folder = shutil.copytree(tiny_models["llama"], tmp_path / name)
        (folder / "model.safetensors").unlink()
        folders[name] = folder
    original.save_pretrained(folders["sharded"], max_shard_size="20KB")
    torch.save(original.state_dict(), folders["zip-bin"] / "pytorch_model.bin")
    torch.save(original.state_dict(), folders["legacy-bin"] / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert len(list(folders["sharded"].glob("model-*.safetensors"))) >= 3
    for name, folder in folders.items():
        assert model_weights_damage(folder) is None, name
        assert torch.equal(load_model(str(folder))(ids).logits, original(ids).logits), name


def test_presets_are_llama_models_with_the_builtin_tokenizer():
    tok = load_tokenizer("tiny-student")
    student, teacher = load_model("tiny-student", tokenizer=tok), load_model("tiny-teacher", tokenizer=tok)
    assert student.config.model_type == teacher.config.model_type == "llama"
    assert student.config.num_hidden_layers < teacher.config.num_hidden_layers
    assert check_vocab(tok, student=student, teacher=teacher) == len(tok)
    again = load_model("tiny-student", tokenizer=tok)  # seeded
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), again.parameters()))


def test_trust_remote_code_is_off_unless_asked(tiny_models, monkeypatch):
    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_models["llama"]))
    assert seen["trust_remote_code"] is False
    load_model(str(tiny_models["llama"]), trust_remote_code=True)
    assert seen["trust_remote_code"] is True


def test_padded_embeddings_are_compatible_but_smaller_ones_are_not(tmp_path):
    tok = build_tokenizer()
    padded = load_model(str(save_tiny_model(tmp_path / "padded", "qwen2", vocab_pad=26)))  # like 151936 vs 152064
    plain = load_model(str(save_tiny_model(tmp_path / "plain", "llama")))
    assert check_vocab(tok, teacher=padded, student=plain) == len(tok)
    small = load_model(str(save_tiny_model(tmp_path / "small", "llama", vocab_pad=-10)))
    with pytest.raises(ValueError, match=r"the student has 92 embedding rows but the tokenizer has 102 tokens"):
        check_vocab(tok, teacher=plain, student=small)


def test_different_tokenizers_are_an_error(tmp_path):
    a = build_tokenizer()
    b = build_tokenizer()
    b.add_tokens(["<extra>"])
    check_same_tokenizer(a, build_tokenizer())
    with pytest.raises(UserError, match=r"teacher has 102 tokens and student 103; id 102 \('<extra>'\) is missing"):
        check_same_tokenizer(a, b)


def test_device_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'paired' needs CUDA"):
        resolve_device("paired", "teacher")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("paired", "student", local_rank=1) == torch.device("cuda:2")
    assert resolve_device("paired", "teacher", local_rank=1) == torch.device("cuda:3")
    assert resolve_device("auto", local_rank=3) == torch.device("cuda:3")


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_missing_builtin_teacher_says_how_to_make_it(monkeypatch, tmp_path):
    import specdistill.models as models

    monkeypatch.setattr(models, "BUILTIN_TEACHER", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="make teacher.*configs/builtin/teacher.yaml.*teacher_facts.yaml.*teacher_polish.yaml"):
        models.load_model("builtin-teacher")


def test_the_shipped_weights_stay_under_20_mb():
    """The package carries its built-in teachers; together they stay small (make teacher rebuilds them)."""
    from specdistill.models import ASSETS

    folders = sorted(p.name for p in ASSETS.iterdir() if p.is_dir())
    assert folders == ["builtin-grid-teacher", "builtin-teacher"]
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total <= 20 * 2**20, f"{total / 2**20:.1f} MB"
