"""benchmarks.search's latency protocol: interleaved rounds, each setting under its own candidate count."""
from __future__ import annotations

from benchmarks.search import interleaved_latency


def test_interleaved_rounds_run_each_setting_under_its_candidates_on_fresh_queries() -> None:
    state: dict[str, int | None] = {"candidates": None}
    seen: dict[str, list[tuple[int | None, int]]] = {"default": [], "wide": []}

    def recorder(name: str):
        return lambda i: seen[name].append((state["candidates"], i))

    order: list[int | None] = []

    def set_candidates(c: int | None) -> None:
        state["candidates"] = c
        order.append(c)

    out = interleaved_latency({"default": (None, recorder("default")), "wide": (256, recorder("wide"))},
                              count=20, rounds=4, set_candidates=set_candidates, warmup=2)
    assert order == [None, 256] * 4 + [None]  # interleaved, and the index's default restored at the end
    assert {c for c, _ in seen["default"]} == {None} and {c for c, _ in seen["wide"]} == {256}
    timed_queries = sorted(i for _, i in seen["wide"])  # each round: 2 warm-up calls, then 5 timed ones
    assert set(range(20)) <= set(timed_queries)  # successive rounds move on to new query numbers
    for name in ("default", "wide"):
        assert len(out[name]["p50_rounds_ms"]) == 4
        rounds = out[name]["p50_rounds_ms"]
        assert min(rounds) - 1e-4 <= out[name]["p50_ms"] <= max(rounds) + 1e-4  # rounds are rounded to 4 places
        assert out[name]["p99_ms"] >= out[name]["p50_ms"] - 1e-4
