"""What the load generator sends: real texts from the data sets and tasks of Zipf popularity."""

from __future__ import annotations

import bisect
import itertools
import random
from pathlib import Path

from loadtest.errors import LoadTestError
from memories.data import read_examples, split_path
from memories.errors import DataError


def load_texts(data: Path, source: str, limit: int = 2000) -> list[str]:
    """Up to ``limit`` texts of a data set's dev split (e.g. sst2: short reviews, bbc: news articles)."""
    try:
        examples = read_examples(split_path(data, source, "dev"))
    except DataError as exc:
        raise LoadTestError(f"no texts for the load test: {exc}") from None
    texts = [example.text for example in examples[:limit] if example.text.strip()]
    if not texts:
        raise LoadTestError(f"the {source} dev split under {data} has no texts")
    return texts


class Zipf:
    """Draws task indices 0..n-1 with P(k) proportional to 1 / (k + 1) ** s (s = 0: uniform)."""

    def __init__(self, n: int, s: float, seed: int) -> None:
        if n < 1 or s < 0:
            raise LoadTestError(f"Zipf needs n >= 1 tasks and s >= 0, got n={n}, s={s}")
        self.cumulative = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))
        self.rng = random.Random(seed)

    def draw(self) -> int:
        return bisect.bisect_left(self.cumulative, self.rng.random() * self.cumulative[-1])

    def share_of_top(self, k: int) -> float:
        """Probability mass of the ``k`` most popular tasks."""
        share: float = self.cumulative[min(k, len(self.cumulative)) - 1] / self.cumulative[-1]
        return share
