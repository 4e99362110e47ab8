"""Stage 2's options: --stage2-holdout (items kept out of stage 1 for stage 2) and --stage2-memory-only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_training import tiny_training

torch = pytest.importorskip("torch")

import export.train as train_module  # noqa: E402
from export.__main__ import main  # noqa: E402
from export.train import TrainConfig, holdout_split, train_adde  # noqa: E402


@pytest.mark.parametrize("n_items, share", [(1000, 0.2), (37, 0.5), (10, 0.05)])
def test_the_holdout_split_partitions_the_items_at_the_share_asked(n_items: int, share: float) -> None:
    fit, held = holdout_split(n_items, share, seed=3)
    assert len(held) == round(share * n_items)
    assert not set(fit) & set(held)
    assert np.array_equal(np.sort(np.concatenate([fit, held])), np.arange(n_items))
    again_fit, again_held = holdout_split(n_items, share, seed=3)
    assert np.array_equal(again_held, held) and np.array_equal(again_fit, fit)
    if len(held) > 1:  # drawn at random, not the last rows of the split
        assert not np.array_equal(held, np.arange(n_items - len(held), n_items))


def test_no_holdout_keeps_every_item_in_stage1() -> None:
    fit, held = holdout_split(50, 0.0, seed=0)
    assert np.array_equal(fit, np.arange(50)) and len(held) == 0


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5])
def test_a_share_outside_0_1_is_refused_with_the_flag_named(share: float) -> None:
    with pytest.raises(ValueError, match="--stage2-holdout"):
        holdout_split(100, share, seed=0)


def test_the_cli_refuses_a_bad_holdout_before_it_reads_any_data(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "ckpt"),
              "--stage2-holdout", "1.2"])
    assert exc.value.code == 2
    assert "--stage2-holdout must be in [0, 1), got 1.2" in capsys.readouterr().err


def test_stage1_never_reads_the_held_items_and_stage2_reads_only_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stage1_rows: list[np.ndarray] = []
    stage2_sizes: list[int] = []
    real_features_for, real_stage2 = train_module.features_for, train_module.stage2

    def recording_features_for(*args, **kwargs):
        source = real_features_for(*args, **kwargs)
        if kwargs.get("desc", args[-1] if args else "").endswith("train"):
            real_batch = source.batch

            def batch(model, rows, gen):
                stage1_rows.append(np.asarray(rows).copy())
                return real_batch(model, rows, gen)

            source.batch = batch
        return source

    def recording_stage2(model, schema, feats, codes, *args, **kwargs):
        stage2_sizes.append(len(codes))
        assert len(feats) == len(codes)
        return real_stage2(model, schema, feats, codes, *args, **kwargs)

    monkeypatch.setattr(train_module, "features_for", recording_features_for)
    monkeypatch.setattr(train_module, "stage2", recording_stage2)
    tiny = tiny_training(tmp_path, 240)
    config = TrainConfig(stage1_steps=12, eval_every=6, stage2_epochs=1, stage2_batch=16, batch_p=4, batch_k=2,
                         batch_random=8, val_queries=50, stage2_holdout=0.25)
    train_adde(*tiny.args(), config)
    fit, held = holdout_split(len(tiny.train.pixels), 0.25, config.seed)
    seen = np.unique(np.concatenate(stage1_rows))
    assert len(stage1_rows) == 12
    assert not set(seen) & set(held), "stage 1 trained on items kept for stage 2"
    assert set(seen) <= set(fit)
    assert stage2_sizes == [len(held)]


def test_memory_only_stage2_moves_the_memory_and_nothing_else(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots: dict[str, dict] = {}
    real_stage2 = train_module.stage2

    def recording_stage2(model, *args, **kwargs):
        snapshots["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = real_stage2(model, *args, **kwargs)
        snapshots["after"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return out

    monkeypatch.setattr(train_module, "stage2", recording_stage2)
    tiny = tiny_training(tmp_path, 240)
    for memory_only in (True, False):
        config = TrainConfig(stage1_steps=6, eval_every=6, stage2_epochs=2, stage2_batch=16, batch_p=4, batch_k=2,
                             batch_random=8, val_queries=50, stage2_memory_only=memory_only)
        train_adde(*tiny.args(), config)
        before, after = snapshots["before"], snapshots["after"]
        moved = {n for n in before if not torch.equal(before[n], after[n])}
        heads = {n for n in before if n.startswith(("learners.", "heads."))}
        assert "memory" in moved
        if memory_only:
            assert moved == {"memory"}, f"memory-only stage 2 changed {sorted(moved - {'memory'})}"
        else:  # the default trains the learners and heads too
            assert moved & heads
