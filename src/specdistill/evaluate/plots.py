"""Plots of bench's results (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

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
    return save_figure(fig, Path(path))


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
    return save_figure(fig, Path(path))


def _short(path: str) -> str:
    """A draft's label: the last two parts of its path without a closing `final` (runs/skd/final -> runs/skd)."""
    parts = Path(path).parts
    return "/".join((parts[:-1] if parts and parts[-1] == "final" else parts)[-2:])


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
