"""Plots for reports (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_bench(results: list[dict], path: str | Path, title: str = "") -> Path:
    """Left: acceptance rate per draft position (one line per gamma). Right: measured and predicted speedup
    over the target alone against gamma (one line per batch size)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        if r["batch_size"] == min(x["batch_size"] for x in results) and r["per_position_acceptance"]:
            if "per_position_acceptance" not in r:
                continue
            xs = range(1, len(r["per_position_acceptance"]) + 1)
            left.plot(xs, r["per_position_acceptance"], marker="o", label=f"gamma={r['gamma']}")
    left.set(xlabel="draft position within a block", ylabel="acceptance rate (accepted / reached)",
             title="Acceptance per position", ylim=(0, 1.05))
    left.legend()
    for bs in sorted({r["batch_size"] for r in results}):
        rows = sorted((r for r in results if r["batch_size"] == bs), key=lambda r: r["gamma"])
        gammas = [r["gamma"] for r in rows]
        right.plot(gammas, [r["speedup_vs_target"] for r in rows], marker="o", label=f"measured, batch {bs}")
        right.plot(gammas, [r["predicted_speedup"] for r in rows], linestyle="--", label=f"predicted, batch {bs}")
        if all(r.get("leviathan_speedup") is not None for r in rows):
            right.plot(gammas, [r["leviathan_speedup"] for r in rows], linestyle=":",
                       label=f"Leviathan (verification = 1 step), batch {bs}")
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set(xlabel="gamma (drafted tokens per block)", ylabel="speedup over the target alone (x)", title="Speedup vs gamma")
    right.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def plot_drafts(comparison: list[dict], results: list[dict], path: str | Path, title: str = "") -> Path:
    """`bench --draft A,B,C` at the smallest batch size. Left: each draft's predicted speedup against gamma (a
    line, from its chosen point's alpha and costs) and its measured speedups (dots). Right: predicted and measured
    speedup at each draft's chosen gamma, labelled with alpha, c and gamma."""
    bs = min(r["batch_size"] for r in comparison)
    rows = [r for r in comparison if r["batch_size"] == bs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, row in enumerate(rows):
        color = f"C{i}"
        chosen = next(r for r in results if r["draft"] == row["draft"] and r["batch_size"] == bs
                      and r["gamma"] == row["gamma"])
        table = chosen["predicted_by_gamma"]
        left.plot([t["gamma"] for t in table], [t["speedup"] for t in table], color=color, linestyle="--",
                  label=f"{_short(row['draft'])} predicted")
        measured = sorted((r["gamma"], r["speedup_vs_target"]) for r in results
                          if r["draft"] == row["draft"] and r["batch_size"] == bs)
        left.plot(*zip(*measured), color=color, marker="o", linestyle="none", label=f"{_short(row['draft'])} measured")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set(xlabel="gamma (drafted tokens per block)", ylabel="speedup over the target alone (x)",
             title=f"Predicted and measured speedup (batch {bs})")
    left.legend(fontsize=8)
    xs = range(len(rows))
    right.bar([x - 0.2 for x in xs], [r["predicted_speedup"] or 0 for r in rows], width=0.4, label="predicted")
    right.bar([x + 0.2 for x in xs], [r["speedup_vs_target"] for r in rows], width=0.4, label="measured")
    for x, r in zip(xs, rows):
        right.annotate(f"alpha {r['token_acceptance']:.2f}\nc {r['cost_ratio_c']:.2f}\ngamma {r['gamma']}",
                       (x, max(r["predicted_speedup"] or 0, r["speedup_vs_target"])), ha="center", va="bottom",
                       fontsize=8)
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set_xticks(list(xs), [_short(r["draft"]) for r in rows], fontsize=8)
    right.set(ylabel="speedup over the target alone (x)", title="At each draft's chosen gamma")
    right.set_ylim(0, 1.3 * max([r["speedup_vs_target"] for r in rows] + [r["predicted_speedup"] or 0 for r in rows]))
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def _short(path: str) -> str:
    """A draft's label: the last two parts of its path without a closing `final` (runs/skd/final -> runs/skd)."""
    parts = Path(path).parts
    return "/".join((parts[:-1] if parts and parts[-1] == "final" else parts)[-2:])


def _by_task(report: dict) -> list[str]:
    return list(dict.fromkeys(r["world"] for r in report["rows"] if "acceptance_rate" in r))


def plot_demo(report: dict, out_dir: str | Path) -> list[Path]:
    """The demo's three figures, one panel per task: quality against acceptance (mean and 95% interval over seeds),
    acceptance per draft position, and the training loss curves (first seed)."""
    out_dir, tasks, paths = Path(out_dir), _by_task(report), []
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in report["rows"] if r["world"] == task and "acceptance_rate" in r):
            ax.errorbar(r["acceptance_rate"], r["quality"], xerr=_err(r, "acceptance_rate"), yerr=_err(r, "quality"),
                        marker="o", capsize=3, label=r["method"])
        ax.set(xlabel="greedy acceptance rate as the teacher's draft (accepted / drafted)",
               ylabel="test quality (exact match; grids: rule score)", title=f"{task}: quality vs acceptance (95% CI)")
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "quality_vs_acceptance.png"))

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    first = report["seeds"][0]
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in report["runs"] if r["world"] == task and r["seed"] == first):
            if "per_position_acceptance" not in r:
                continue
            xs = range(1, len(r["per_position_acceptance"]) + 1)
            ax.plot(xs, r["per_position_acceptance"], marker="o", label=r["method"])
        ax.set(xlabel="draft position within a block", ylabel="acceptance rate (accepted / reached)",
               title=f"{task}: acceptance per position (gamma={report['gamma']}, seed {first})", ylim=(0, 1.05))
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "acceptance_per_position.png"))

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in report["runs"] if r["world"] == task and r["seed"] == first):
            if not r.get("loss_curve"):
                continue
            steps, losses = zip(*r["loss_curve"])
            ax.plot(steps, losses, label=r["method"])
        ax.set(xlabel="optimizer step", ylabel="training loss per token (each method's own loss)", title=f"{task}: training curves (seed {first})")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "training_curves.png"))
    return paths


def _err(row: dict, key: str):
    """[[below], [above]] the mean: the 95% interval's arms; none for a single seed."""
    low, high = row.get(key + "_low", math.nan), row.get(key + "_high", math.nan)
    return None if math.isnan(low) else [[row[key] - low], [high - row[key]]]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
