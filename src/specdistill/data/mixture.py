"""A seeded stream of training records drawn from several datasets with ratios that change over training.

Every process builds the same global batch from (seed, step) and the cursor, then takes its own micro-batches, so ranks
see disjoint data and a run with N processes sees the same records as one process with the same global batch.
The cursor (records consumed per dataset) is saved in checkpoints: a resumed run draws exactly what the
uninterrupted run would have drawn.
"""

from __future__ import annotations

import numpy as np

from ..config import MixtureStage, stage_step
from .records import Record


class MixtureStream:
    def __init__(self, datasets: list[list[Record]], weights: list[float], schedule: list[MixtureStage],
                 max_steps: int, seed: int):
        if any(len(d) == 0 for d in datasets):
            raise ValueError("every training dataset needs at least one record")
        self.datasets, self.weights, self.max_steps, self.seed = datasets, weights, max_steps, seed
        self.schedule = sorted(schedule, key=lambda s: s.start)
        self.cursor = [0] * len(datasets)

    def weights_at(self, step: int) -> np.ndarray:
        """Mixture weights in force at `step` (the last stage whose start fraction has been reached)."""
        w = self.weights
        for stage in self.schedule:
            if step >= stage_step(stage.start, self.max_steps):
                w = stage.weights
        w = np.asarray(w, dtype=np.float64)
        return w / w.sum()

    def _take(self, d: int) -> Record:
        """The next record of dataset d, in a fresh seeded permutation for every epoch."""
        n = len(self.datasets[d])
        epoch, pos = divmod(self.cursor[d], n)
        order = np.random.default_rng([self.seed, d, epoch]).permutation(n)
        self.cursor[d] += 1
        return self.datasets[d][order[pos]]

    def next_batch(self, step: int, groups: int, group_size: int) -> list[list[Record]]:
        """The global batch for `step`: `groups` micro-batches of `group_size` records, the same on every process.

        Each micro-batch comes from one dataset, drawn with the mixture weights: rows of one dataset have
        similar lengths, so little compute goes to padding, and the ratios hold over the micro-batches.
        """
        rng = np.random.default_rng([self.seed, 1_000_003, step])
        picks = rng.choice(len(self.datasets), size=groups, p=self.weights_at(step))
        return [[self._take(int(d)) for _ in range(group_size)] for d in picks]

    def state_dict(self) -> dict:
        return {"cursor": list(self.cursor)}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = [int(c) for c in state["cursor"]]
