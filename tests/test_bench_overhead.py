"""The scheduler step timing (gddim.bench.overhead)."""

from gddim.bench import overhead


def test_step_overhead_times_every_scheduler():
    result = overhead.step_overhead(shape=(2, 1, 4, 4), steps=3, repeats=1)
    assert set(result["median_step_seconds"]) == set(overhead.schedulers())
    times, ratios = result["median_step_seconds"], result["step_ratio_to_ddim"]
    assert all(v > 0 for v in times.values())
    assert all(ratios[name] == times[name] / times["ddim"] for name in times)  # each ratio is to DDIM's own median
