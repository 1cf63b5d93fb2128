"""Task samplers for multi-task training: which task the next step trains. One tiny class each,
registered by name in registry.SAMPLERS (the recipe's `sampling.strategy`)."""

from __future__ import annotations

import numpy as np

from ..registry import SAMPLERS


class TaskSampler:
    def __init__(self, sizes: dict[str, int], rng: np.random.Generator, temperature: float = 2.0):
        self.tasks = list(sizes)
        self.sizes = np.array([sizes[t] for t in self.tasks], dtype=np.float64)
        self.rng = rng
        self.temperature = temperature

    def probabilities(self) -> dict[str, float]:
        raise NotImplementedError

    def next(self) -> str:
        p = self.probabilities()
        return self.tasks[int(self.rng.choice(len(self.tasks), p=[p[t] for t in self.tasks]))]


@SAMPLERS.register("proportional")
class ProportionalSampler(TaskSampler):
    def probabilities(self):
        return dict(zip(self.tasks, self.sizes / self.sizes.sum()))


@SAMPLERS.register("temperature")
class TemperatureSampler(TaskSampler):
    """p ~ n^(1/T): T=1 is proportional, a large T approaches uniform."""

    def probabilities(self):
        w = self.sizes ** (1.0 / self.temperature)
        return dict(zip(self.tasks, w / w.sum()))


@SAMPLERS.register("uniform")
class UniformSampler(TaskSampler):
    def probabilities(self):
        return {t: 1.0 / len(self.tasks) for t in self.tasks}


@SAMPLERS.register("round_robin")
class RoundRobinSampler(TaskSampler):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.i = -1

    def probabilities(self):
        return {t: 1.0 / len(self.tasks) for t in self.tasks}

    def next(self) -> str:
        self.i = (self.i + 1) % len(self.tasks)
        return self.tasks[self.i]


def make_sampler(strategy: str, sizes: dict[str, int], rng, temperature: float = 2.0) -> TaskSampler:
    return SAMPLERS.get(strategy)(sizes, rng, temperature=temperature)


def example_weights(classes: np.ndarray, sources: np.ndarray, balance: str) -> np.ndarray | None:
    """Each training example's chance of being drawn (summing to 1), for a task's `balance`:
    "classes": every class drawn equally often; "classes_per_source": within each source, every
    class it has drawn equally often, and each source as often as its size says. "none": None
    (examples are drawn in shuffled passes, each once per pass)."""
    if balance == "none":
        return None
    groups = sources if balance == "classes_per_source" else np.zeros(len(classes), dtype=np.int64)
    w = np.zeros(len(classes), dtype=np.float64)
    for g in np.unique(groups):
        in_g = groups == g
        labels, counts = np.unique(classes[in_g], return_counts=True)
        share = in_g.sum() / len(labels)  # the group's size, split evenly over its classes
        for lab, c in zip(labels, counts):
            w[in_g & (classes == lab)] = share / c
    return w / w.sum()
