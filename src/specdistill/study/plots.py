"""The study's figures (PNG), one panel per world: quality against acceptance (mean and 95% interval over seeds),
acceptance per draft position, and the training loss curves (first seed)."""

from __future__ import annotations

import math
from pathlib import Path

from ..evaluate.plots import plt, save_figure  # pyplot on the Agg backend


def plot_demo(report: dict, out_dir: str | Path) -> list[Path]:
    """The three figures of a report, written into out_dir (report.FIGURE_NAMES)."""
    out_dir = Path(out_dir)
    worlds = list(dict.fromkeys(r["world"] for r in report["rows"] if "acceptance_rate" in r))
    return [save_figure(_quality_vs_acceptance(report, worlds), out_dir / "quality_vs_acceptance.png"),
            save_figure(_acceptance_per_position(report, worlds), out_dir / "acceptance_per_position.png"),
            save_figure(_training_curves(report, worlds), out_dir / "training_curves.png")]


def _panels(worlds: list[str], height: float):
    fig, axes = plt.subplots(1, len(worlds), figsize=(6 * len(worlds), height), squeeze=False)
    return fig, zip(axes[0], worlds)


def _quality_vs_acceptance(report: dict, worlds: list[str]):
    fig, panels = _panels(worlds, 4.6)
    for ax, world in panels:
        for r in (r for r in report["rows"] if r["world"] == world and "acceptance_rate" in r):
            ax.errorbar(r["acceptance_rate"], r["quality"], xerr=_err(r, "acceptance_rate"), yerr=_err(r, "quality"),
                        marker="o", capsize=3, label=r["method"])
        ax.set(xlabel="greedy acceptance rate as the teacher's draft (accepted / drafted)",
               ylabel="test quality (exact match; grids: rule score)", title=f"{world}: quality vs acceptance (95% CI)")
        ax.legend(fontsize=8)
    return fig


def _first_seed_runs(report: dict, world: str, key: str) -> list[dict]:
    """The first seed's runs of a world that have `key` (non-empty)."""
    return [r for r in report["runs"] if r["world"] == world and r["seed"] == report["seeds"][0] and r.get(key)]


def _acceptance_per_position(report: dict, worlds: list[str]):
    fig, panels = _panels(worlds, 4.2)
    for ax, world in panels:
        for r in _first_seed_runs(report, world, "per_position_acceptance"):
            xs = range(1, len(r["per_position_acceptance"]) + 1)
            ax.plot(xs, r["per_position_acceptance"], marker="o", label=r["method"])
        ax.set(xlabel="draft position within a block", ylabel="acceptance rate (accepted / reached)",
               title=f"{world}: acceptance per position (gamma={report['gamma']}, seed {report['seeds'][0]})",
               ylim=(0, 1.05))
        ax.legend(fontsize=8)
    return fig


def _training_curves(report: dict, worlds: list[str]):
    fig, panels = _panels(worlds, 4.2)
    for ax, world in panels:
        for r in _first_seed_runs(report, world, "loss_curve"):
            steps, losses = zip(*r["loss_curve"])
            ax.plot(steps, losses, label=r["method"])
        ax.set(xlabel="optimizer step", ylabel="training loss per token (each method's own loss)",
               title=f"{world}: training curves (seed {report['seeds'][0]})")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    return fig


def _err(row: dict, key: str):
    """[[below], [above]] the mean: the 95% interval's arms; none for a single seed."""
    low, high = row.get(key + "_low", math.nan), row.get(key + "_high", math.nan)
    return None if math.isnan(low) else [[row[key] - low], [high - row[key]]]
