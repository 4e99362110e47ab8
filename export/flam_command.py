"""``python -m export flam``: FLAM end to end: retrieval features, both training stages, the
two-graph bundle (OUT/bundle), the test split's index (OUT/index) and the quality report."""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from fashsdk.files import atomic_write_json
from fashsdk.sources.preprocess import PreprocessSpec
from fashsdk.system import machine

from .backbones import LITE_MEAN, LITE_STD
from .catalog_args import add_catalog_args, add_config_arguments, load_catalog_from_args
from .data import decode_catalog
from .features import TrunkFeatures
from .flam_bundle import FlamEncoder, build_flam_bundle, fit_label_projection, fit_whitening, retrieval_network, whiten
from .flam_checks import manipulation_checks
from .flam_checks import markdown as checks_markdown
from .flam_train import FlamConfig, labelled_rows, train_flam


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_catalog_args(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/flam"))
    parser.add_argument("--dim", type=int, default=256, help="retrieval feature size after PCA whitening")
    parser.add_argument("--feature", choices=["pca", "labels"], default="labels",
                        help="retrieval feature: PCA whitening of the pretrained trunk (label-free), or that "
                             "projection refined with the labelled rows' values (export/flam_bundle.py)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=(128, 96))
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"), help="decoded-pixel cache folder")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                        help="stop after the bundle (no index of the test split, no quality report)")
    add_config_arguments(parser, FlamConfig)


def features_of(network: torch.nn.Module, pixels: np.ndarray, catalog: object, spec: PreprocessSpec,
                desc: str) -> np.ndarray:
    """(N, 1280) pooled Lite0 features of decoded pixels (ONNX Runtime, all cores)."""
    from .data import ImageSet

    images = ImageSet(catalog, pixels)  # type: ignore[arg-type]
    acts = TrunkFeatures.build(network, images, spec, 1, desc=desc).activations
    return acts[:, 0].float().numpy()


def cmd_flam(args: argparse.Namespace) -> int:
    from .pipeline import evaluate_bundles, index_test_split

    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    catalog, images = load_catalog_from_args(args)
    spec = PreprocessSpec(height=args.input_size[0], width=args.input_size[1], mean=LITE_MEAN, std=LITE_STD)
    train = catalog.split("train")
    decoded = decode_catalog(train, images, spec, cache_dir=args.cache)
    network = retrieval_network()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    raw = features_of(network, decoded.pixels, train, spec, "retrieval features, train")
    mean, projection = fit_whitening(raw, args.dim)
    config = FlamConfig(**{f.name: getattr(args, f.name) for f in fields(FlamConfig)})
    if args.feature == "labels":
        projection = fit_label_projection(raw, mean, projection, train.codes,
                                          labelled_rows(train.codes, config.label_fraction, config.seed),
                                          catalog.schema.sizes, seed=config.seed)
    features = whiten(raw, mean, projection)
    timings["features_s"] = time.perf_counter() - t
    t = time.perf_counter()
    models = train_flam(features, train.codes, catalog.schema.sizes, config)
    timings["train_s"] = time.perf_counter() - t
    encoder = FlamEncoder(network, mean, projection, models.embedders)
    print("== export both graphs and build the bundle (generator family)", flush=True)
    info = {"flam": {**asdict(config), "feature": args.feature}}
    bundle, checks = build_flam_bundle(encoder, models.generator, catalog.schema, spec, out / "bundle",
                                       decoded.pixels[:64], features[:64], info)
    print(f"   parity: model {checks['parity']['max_abs_diff']:.1e}, "
          f"manipulator {checks['manipulator_max_abs_diff']:.1e}")
    report = {"machine": machine(), "bundle": str(out / "bundle"), "bundle_sha256": bundle.sha256(),
              "config": asdict(config), "feature": args.feature, "checks": checks, "history": models.history}
    if args.evaluate:
        args.seed = config.seed
        _, _, encode_ms = index_test_split(out, catalog, images, timings)
        quality = evaluate_bundles(out, [out / "bundle"], args, images, timings)
        report.update({"top_k": quality["top_k"], "encode_ms_per_image": round(encode_ms, 3)})
        t = time.perf_counter()
        report["manipulation_checks"] = manipulation_checks(features, train.codes, out / "bundle", out / "index",
                                                            seed=config.seed)
        timings["checks_s"] = time.perf_counter() - t
        (out / "checks.md").write_text(checks_markdown(report["manipulation_checks"]))
        print(checks_markdown(report["manipulation_checks"]), flush=True)
    report.update({"timings_s": {k: round(v, 1) for k, v in timings.items()},
                   "total_s": round(time.perf_counter() - started, 1)})
    atomic_write_json(out / "report.json", report)
    print(f"== FLAM done in {report['total_s'] / 60:.1f} min: {out}/bundle" + (f", {out}/index, {out}/quality.md"
                                                                           if args.evaluate else ""), flush=True)
    return 0
