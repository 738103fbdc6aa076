"""Reading configs: a YAML file (or a packaged one) with `--set a.b=c` overrides, built and checked; writing
the resolved config back."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from ..errors import one_line
from .building import build
from .schema import Config, ConfigError
from .validation import validate, validate_data


def yaml_reason(exc: Exception) -> str:
    """PyYAML's error in a few words: the problem and where (line and column, 1-based)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem is None:
        return one_line(str(exc))
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b=c` override in place; the value is parsed as YAML (`x=3` is an int, `x=[1,2]` a list)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(f"override {override!r}: the key {key.strip()!r} must look like section.field (dots "
                          f"between non-empty names)")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:  # absent, or null in the file (data.validation: null): a new section
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({yaml_reason(exc)}); quote "
                          f"text that holds YAML characters") from None


PACKAGED_CONFIGS = Path(__file__).parent.parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A config file path as given, else the same name among the configs shipped with the package
    (so `configs/builtin/teacher.yaml` works from any directory after a pip install)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    relative = path.parts[1:] if path.parts and path.parts[0] == "configs" else path.parts
    packaged = PACKAGED_CONFIGS.joinpath(*relative) if relative else PACKAGED_CONFIGS
    return packaged if packaged.is_file() else path


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), cls: type = Config,
                check=None) -> Any:
    """Read a YAML file (or nothing: the defaults), apply `--set` overrides, check and build the dataclass.
    check: the range checks run on the built config (default `validate`)."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = resolve_config_path(path)
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a folder; give a YAML config file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte offset {exc.start}); save it as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {yaml_reason(exc)}") from None
        if data is None:
            raise ConfigError(f"{path}: the file is empty; give at least the sections you mean to set "
                              f"(configs/sft.yaml is a starting point)")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    for ov in overrides:
        apply_override(data, ov)
    try:
        cfg = build(cls, data)
        (check or validate)(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load_prompt_config(path: str | Path) -> Config:
    """A config read for the settings that make prompts (`eval`, `bench` and `generate --config`: data.views and
    the datasets' field mappings). Every key is checked as `load_config` checks it, but only the data section's
    values are validated, so a run's config.yaml loads on any machine (its devices and models need not be here)."""
    return load_config(path, check=lambda cfg: validate_data(cfg.data))


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (it loads back to an equal config)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
