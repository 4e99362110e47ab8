"""python -m benchmarks.quality_ablation --checkpoint C --json OUT: where does Top-30 stop?

Takes a trained checkpoint (stage 1 + stage 2 done) and asks whether the manipulation stage
or the backbone limits Top-30: with the backbone frozen it measures
- the checkpoint as it is (validation and test Top-k, attribute accuracy per split);
- the same model on a gallery of *training* items of the test split's size (the
  generalisation gap: stage 2 fits its training features);
- stage 2 run again from the checkpoint, and from freshly initialised learners, heads and
  memory (is the manipulation stage under-trained?);
- stage 2 on backbone features averaged with those of the mirrored image (what a
  flip-averaging encoder would add, at twice the encode cost).
Model selection inside every variant uses the validation split; test figures are reported.
Needs torch (the training side); for backbones trained from pixels (the compact one).
"""
from __future__ import annotations

import argparse
import copy
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from export.catalog_args import add_data_args, data_paths
from export.data import decode_catalog, split_validation
from export.features import PixelFeatures, TrainingFeatures
from export.models import ADDE
from export.stage2 import stage2
from export.train import TrainConfig, TrainResult, load_checkpoint
from export.validation import attribute_accuracies, init_memory, manipulation_top_k
from fashsdk.eval.protocol import manipulation_queries
from fashsdk.files import atomic_write_json
from fashsdk.sources.catalog import read_catalog
from fashsdk.system import machine

KS = (10, 30, 50)


def fresh_heads(model: ADDE) -> ADDE:
    """A model with the same backbone and newly initialised learners, heads and memory."""
    fresh = ADDE(model.config)
    fresh.backbone.load_state_dict(model.backbone.state_dict())
    return fresh


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality_ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a `python -m export train/demo` checkpoint folder")
    add_data_args(p)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--stage2-epochs", type=int, default=12)
    p.add_argument("--test-queries", type=int, default=20000)
    p.add_argument("--cache", type=Path, default=Path("runs/cache"))
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model, schema, spec, saved = load_checkpoint(args.checkpoint)
    train_saved = saved["train"]
    labels, images = data_paths(args)
    catalog, _ = read_catalog(labels, schema.names, schema=schema)
    train_catalog = catalog.split("train")
    decoded = decode_catalog(train_catalog, images, spec, cache_dir=args.cache)
    train_rows, val_rows = split_validation(train_catalog, seed=train_saved["seed"])  # training's split
    train, val = decoded.subset(train_rows), decoded.subset(val_rows)
    test = decode_catalog(catalog.split("test"), images, spec, cache_dir=args.cache)
    sizes = schema.sizes
    val_q = manipulation_queries(val.catalog.codes, sizes, max_queries=train_saved["val_queries"], seed=train_saved["seed"])
    test_q = manipulation_queries(test.catalog.codes, sizes, max_queries=args.test_queries, seed=0)

    t0 = time.perf_counter()
    sources: dict[str, TrainingFeatures] = {name: PixelFeatures(s, spec) for name, s in (("train", train), ("val", val),
                                                                                            ("test", test))}
    plain = {name: src.features(model) for name, src in sources.items()}
    mirrored = {name: src.features(model, flip=True) for name, src in sources.items()}
    print(f"backbone features for {sum(len(f) for f in plain.values())} images x 2 in {time.perf_counter() - t0:.0f} s",
          flush=True)

    def figures(m, feats: dict[str, torch.Tensor]) -> dict[str, Any]:
        v = manipulation_top_k(m, schema, feats["val"], val.catalog.codes, val_q, KS)
        t = manipulation_top_k(m, schema, feats["test"], test.catalog.codes, test_q, KS)
        return {"val_top_k": {str(k): round(x, 4) for k, x in v.items()},
                "test_top_k": {str(k): round(x, 4) for k, x in t.items()}}

    def retrain(m, feats: dict[str, torch.Tensor], epochs: int) -> Any:
        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{**{k: v for k, v in train_saved.items() if k in known}, "stage2_epochs": epochs,
                                "stage2_patience": epochs})
        result = TrainResult(m)

        def validate() -> float:
            return manipulation_top_k(m, schema, feats["val"], val.catalog.codes, val_q, (30,))[30]

        state, _ = stage2(m, schema, feats["train"], train.catalog.codes, validate, config, result,
                          copy.deepcopy(m.state_dict()), -1.0)
        m.load_state_dict(state)
        return m

    def fresh(feats: dict[str, torch.Tensor]) -> Any:
        m = fresh_heads(model)
        init_memory(m, feats["train"], train.catalog.codes, train_saved["proto_per_value"], train_saved["seed"])
        return retrain(m, feats, args.stage2_epochs + 8)

    averaged = {k: (plain[k] + mirrored[k]) / 2 for k in plain}
    variants: dict[str, Callable[[], dict[str, Any]]] = {
        "checkpoint": lambda: figures(model, plain),
        "stage2_again": lambda: figures(retrain(copy.deepcopy(model), plain, args.stage2_epochs), plain),
        "stage2_fresh_heads": lambda: figures(fresh(plain), plain),
        "stage2_flip_averaged": lambda: figures(retrain(copy.deepcopy(model), averaged, args.stage2_epochs), averaged),
    }
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "machine": machine(), "model": saved["model"],
                              "val_queries": len(val_q), "test_queries": len(test_q), "variants": {}}
    for name, run in variants.items():
        t = time.perf_counter()
        report["variants"][name] = {**run(), "seconds": round(time.perf_counter() - t, 1)}
        print(f"{name}: {report['variants'][name]}", flush=True)

    rows = np.random.default_rng(0).choice(len(train.catalog.codes), len(test.catalog.codes), replace=False)
    seen_codes = train.catalog.codes[rows]
    seen_q = manipulation_queries(seen_codes, sizes, max_queries=args.test_queries, seed=0)
    seen_top = manipulation_top_k(model, schema, plain["train"][torch.from_numpy(rows)], seen_codes, seen_q, KS)
    report["training_items_gallery_top_k"] = {str(k): round(x, 4) for k, x in seen_top.items()}
    report["attribute_accuracy"] = {"attributes": schema.names,
                                    **{name: [round(x, 4) for x in attribute_accuracies(model, plain[name], s.catalog.codes)]
                                       for name, s in (("train", train), ("val", val), ("test", test))}}
    print(f"gallery of {len(rows)} training items: {report['training_items_gallery_top_k']}; "
          f"attribute accuracy {report['attribute_accuracy']}", flush=True)
    atomic_write_json(args.json, report)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
