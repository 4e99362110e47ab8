"""python -m benchmarks.stage2_variants --out DIR [-- TRAIN FLAGS]: stage-2 variants from one stage 1.

Trains stage 1 once with ``python -m export train``'s recipe (the flags after ``--``; the demo's
by default), then runs each stage-2 variant from that same state and measures, per variant:
validation Top-30 after every epoch, test Top-10/30 of the adde query (20,000 test-split queries,
seed 0, exact search over the model's embeddings), and the blend query chosen on validation and
its test Top-30. The checkpoint keeps the default stage 2. Writes DIR/stage2-variants.json and .md.

Variants: the default (memory block, learners and heads on manipulation triplets) and
``--stage2-memory-only`` (the memory block alone, the embedding as stage 1 left it).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import export.pipeline as pipeline
import export.train as train_module
from export.__main__ import main as export_main
from export.catalog_args import DEFAULT_DATA
from export.query_mix import choose_query_mix
from export.validation import manipulation_top_k
from fashsdk.eval.protocol import manipulation_queries
from fashsdk.families.chunk_replace import reference_rows, value_means
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.system import machine

DEMO_RECIPE = ["--lite-split", "12", "--trunk-variants", "2", "--stage1-time-budget-s", "540",
               "--stage2-time-budget-s", "30"]
VARIANTS: dict[str, dict[str, Any]] = {
    "default (memory, learners, heads)": {},
    "memory block only": {"stage2_memory_only": True, "stage2_patience": 30},
}


class VariantRunner:
    """Replaces export.train's stage 2 for one training run: every variant from the same stage-1 state."""

    def __init__(self, stage2: Callable[..., tuple[dict, float]]) -> None:
        self.stage2, self.rows, self.context = stage2, [], {}

    def __call__(self, model, schema, feats, codes, validate: Callable[[], float], config, result, best_state,
                 best_score, log=print):
        ctx = self.context
        test = ctx["test"]
        test_feats = train_module.features_for(model, test, ctx["spec"], 1, 0, False,
                                               "trunk activations, test").features(model)
        val_feats = ctx["val_source"].features(model)
        self.queries = {"val": manipulation_queries(ctx["val_codes"], schema.sizes, max_queries=config.val_queries,
                                                    seed=config.seed),
                        "test": manipulation_queries(test.catalog.codes, schema.sizes, max_queries=20000, seed=0)}
        rows = reference_rows(codes, schema.sizes, config.proto_per_value, config.seed)
        self.evaluated = (schema, feats[torch.from_numpy(rows)], codes[rows], val_feats, test_feats, test.catalog.codes)
        start = copy.deepcopy(model.state_dict())
        self._record(model, "memory by averaging (no stage 2)", {"val_top30": best_score})
        kept = None
        for name, changes in VARIANTS.items():
            model.load_state_dict(start)
            history = train_module.TrainResult(model)
            t = time.perf_counter()
            state, score = self.stage2(model, schema, feats, codes, validate,
                                       dataclasses.replace(config, **changes), history,
                                       copy.deepcopy(start), best_score, log)
            model.load_state_dict(state)
            self._record(model, name, {"val_top30": score, "seconds": round(time.perf_counter() - t, 1),
                                       "val_curve": [round(h["val_top30"], 4) for h in history.history]})
            kept = kept or (state, score)
        return kept

    def _record(self, model, name: str, fields: dict[str, Any]) -> None:
        schema, reference_feats, reference_codes, val_feats, test_feats, test_codes = self.evaluated
        top = manipulation_top_k(model, schema, test_feats, test_codes, self.queries["test"])
        layout = model.chunk_layout()
        embed = train_module._embed
        table, _ = value_means(embed(model, reference_feats), reference_codes, schema, layout)
        memory = model.memory.detach().numpy().astype(np.float32)
        mix = choose_query_mix(schema, layout, memory, table, embed(model, val_feats), self.context["val_codes"],
                               self.queries["val"])
        b, c = mix.pair
        on_test = choose_query_mix(schema, layout, memory, table, embed(model, test_feats), test_codes,
                                   self.queries["test"], blends=(0.0, b), emphases=(1.0, c))
        self.rows.append({"variant": name, **fields, "test_top10": round(top[10], 4), "test_top30": round(top[30], 4),
                          "blend": [b, c], "val_top30_blend": round(mix.top30(), 4),
                          "test_top30_blend": round(on_test.top30((b, c)), 4)})
        print("variant:", self.rows[-1], flush=True)


def write_report(out: Path, runner: VariantRunner, recipe: list[str]) -> None:
    info = machine()
    atomic_write_json(out / "stage2-variants.json", {"machine": info, "recipe": recipe, "variants": runner.rows})
    lines = [f"# Stage-2 variants from one stage 1 ({info.get('cpu', '')})", "",
             f"Recipe: `python -m export train {' '.join(recipe)}`; test: 20,000 queries on the test split.", "",
             "| stage 2 | val Top-30 adde | test Top-10 adde | test Top-30 adde | blend (b, c) | val Top-30 blend | "
             "test Top-30 blend | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in runner.rows:
        lines.append(f"| {r['variant']} | {r['val_top30']:.4f} | {r['test_top10']:.4f} | {r['test_top30']:.4f} | "
                     f"{r['blend'][0]:g}, {r['blend'][1]:g} | {r['val_top30_blend']:.4f} | "
                     f"{r['test_top30_blend']:.4f} | {r.get('seconds', '')} |")
    lines += ["", "Validation Top-30 after each stage-2 epoch:", ""]
    lines += [f"- {r['variant']}: {r['val_curve']}" for r in runner.rows if "val_curve" in r]
    atomic_write_bytes(out / "stage2-variants.md", ("\n".join(lines) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = argv[argv.index("--") + 1:] if "--" in argv else DEMO_RECIPE
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stage2_variants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runner = VariantRunner(train_module.stage2)
    real_features_for, real_train = train_module.features_for, pipeline._train

    def features_for(*a, **k):  # keeps the validation source, so the blend is chosen on the same features
        source = real_features_for(*a, **k)
        if a[-1].endswith("val"):
            runner.context.update(val_source=source, val_codes=a[1].catalog.codes)
        return source

    def train_with_test(targs, catalog, images):
        spec = pipeline._spec_for(targs)
        runner.context.update(spec=spec, test=pipeline.decode_catalog(catalog.split("test"), images, spec,
                                                                        cache_dir=targs.cache))
        return real_train(targs, catalog, images)

    patches = [(train_module, "stage2", runner), (train_module, "features_for", features_for),
               (pipeline, "_train", train_with_test)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        code = export_main(["train", "--data", str(args.data), "--out", str(args.out / "checkpoint"), *recipe])
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
    write_report(args.out, runner, recipe)
    print(f"wrote {args.out / 'stage2-variants.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
