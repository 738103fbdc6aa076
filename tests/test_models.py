import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

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
