"""The scheduler step timing (gddim.bench.overhead)."""

from gddim.bench import overhead


def test_step_overhead_times_every_scheduler():
    result = overhead.step_overhead(shape=(2, 1, 4, 4), steps=3, repeats=1)
    assert set(result["median_step_seconds"]) == set(overhead.schedulers())
    assert result["step_ratio_to_ddim"]["ddim"] == 1.0 and all(v > 0 for v in result["median_step_seconds"].values())
