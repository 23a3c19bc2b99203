from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from loadtest.errors import LoadTestError
from loadtest.workload import Zipf, load_texts


def test_zipf_popularity_follows_its_weights() -> None:
    zipf = Zipf(200, 1.1, seed=0)
    draws = Counter(zipf.draw() for _ in range(20_000))
    assert set(draws) <= set(range(200))
    assert draws[0] / 20_000 == pytest.approx(zipf.share_of_top(1), abs=0.02)
    assert sum(draws[k] for k in range(10)) / 20_000 == pytest.approx(zipf.share_of_top(10), abs=0.02)
    assert draws[0] > draws[1] > draws[10]


def test_zipf_with_s_zero_is_uniform() -> None:
    zipf = Zipf(4, 0.0, seed=1)
    draws = Counter(zipf.draw() for _ in range(8000))
    assert all(abs(draws[k] / 8000 - 0.25) < 0.03 for k in range(4))


def test_texts_come_from_the_dev_split(toy_data: Path) -> None:
    texts = load_texts(toy_data, "toy")
    assert texts
    assert all(isinstance(t, str) and t.strip() for t in texts)


def test_missing_data_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(LoadTestError, match="no texts for the load test: no dev.jsonl for task 'sst2'"):
        load_texts(tmp_path, "sst2")
