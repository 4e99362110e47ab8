"""Stage 1 stops once validation Top-30 has not improved for ``patience`` evaluations."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from tiny_training import tiny_training

pytest.importorskip("torch")

import export.train as train_module  # noqa: E402
from export.train import TrainConfig, train_adde  # noqa: E402


@pytest.mark.parametrize("patience, evaluations", [(2, 4), (3, 5)])
def test_stage1_stops_after_patience_evaluations_without_a_better_score(
        patience: int, evaluations: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = itertools.chain([0.50, 0.60, 0.55, 0.58, 0.59, 0.90], itertools.repeat(0.60))

    def top_k(*args, **kwargs) -> dict[int, float]:  # validation Top-k, scripted: improves, then stalls
        score = next(scripted)
        return {10: score, 30: score}

    monkeypatch.setattr(train_module, "manipulation_top_k", top_k)
    tiny = tiny_training(tmp_path, 200)
    config = TrainConfig(stage1_steps=200, eval_every=5, patience=patience, stage2_epochs=0, batch_p=4, batch_k=2,
                         batch_random=8, val_queries=50)
    result = train_adde(*tiny.args(), config)
    stage1 = [h for h in result.history if h["stage"] == 1]
    # 0.60 at the second evaluation is the best; after it, `patience` evaluations without a better one
    assert [h["step"] for h in stage1] == [5 * (i + 1) for i in range(evaluations)]
    assert [h["val_top30"] for h in stage1] == [0.50, 0.60, 0.55, 0.58, 0.59][:evaluations]


def test_stage1_evaluations_set_the_memory_from_a_smaller_sample_than_the_final_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fashsdk.families.chunk_replace import reference_rows

    calls: list[tuple[int, int]] = []
    real_init = train_module.init_memory

    def recording_init(model, features, codes, per_value, seed=0) -> None:
        calls.append((len(features), per_value))
        real_init(model, features, codes, per_value, seed)

    monkeypatch.setattr(train_module, "init_memory", recording_init)
    monkeypatch.setattr(train_module, "EVAL_PROTO_PER_VALUE", 3)
    tiny = tiny_training(tmp_path, 200)
    config = TrainConfig(stage1_steps=10, eval_every=5, stage2_epochs=0, batch_p=4, batch_k=2, batch_random=8,
                         val_queries=50)
    result = train_adde(*tiny.args(), config)
    small = len(reference_rows(tiny.train.catalog.codes, tiny.schema.sizes, 3, config.seed))
    full = len(reference_rows(tiny.train.catalog.codes, tiny.schema.sizes, config.proto_per_value, config.seed))
    assert small < full
    evaluations = len([h for h in result.history if h["stage"] == 1])
    # every stage-1 evaluation reads the small sample; the memory that is kept comes from the full one
    assert calls[:evaluations] == [(small, 3)] * evaluations
    assert calls[evaluations] == (full, config.proto_per_value)


def test_the_stage1_plan_follows_the_measured_cost_of_steps_and_evaluations() -> None:
    from export.train import planned_steps

    # 100 s left, 2 evaluations of 10 s to come, 0.5 s per step: 160 more steps
    assert planned_steps(step=300, cap=4000, time_left=100, per_step=0.5, per_eval=10, evals_left=2) == 460
    # steps got twice as slow: the plan shrinks, so the schedule still ends on the budget
    assert planned_steps(step=300, cap=4000, time_left=100, per_step=1.0, per_eval=10, evals_left=2) == 380
    # they got faster: the plan grows, up to the cap
    assert planned_steps(step=300, cap=400, time_left=100, per_step=0.25, per_eval=10, evals_left=2) == 400
    # no time left after the evaluations: stop where it is, never go back
    assert planned_steps(step=300, cap=4000, time_left=15, per_step=0.5, per_eval=10, evals_left=2) == 300
