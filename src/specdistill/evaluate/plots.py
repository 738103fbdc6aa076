"""Plots for reports (PNG, matplotlib's Agg backend: no display needed)."""

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
        right.plot(gammas, [r["predicted_speedup"] for r in rows], linestyle="--", label=f"Leviathan predicted, batch {bs}")
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set(xlabel="gamma (drafted tokens per block)", ylabel="speedup over the target alone (x)", title="Speedup vs gamma")
    right.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
