"""The commands behind ``python -m export``: train, onnx, demo (the product end to end)."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from fashsdk import Retriever
from fashsdk.eval.contact_sheet import render_sheet
from fashsdk.eval.protocol import combination_keys, manipulation_queries
from fashsdk.families.chunk_replace import reference_rows, value_means
from fashsdk.files import atomic_write_json
from fashsdk.progress import progress_bar
from fashsdk.sources.catalog import read_catalog
from fashsdk.sources.images import load_images
from fashsdk.sources.preprocess import PreprocessSpec
from fashsdk.system import machine

from .backbones import LITE_MEAN, LITE_STD
from .catalog_args import data_paths, load_catalog_from_args
from .data import decode_catalog, split_validation
from .families import family_files, served_family, table_family_arrays, value_table
from .label_probe import add_rerank, probe_rows
from .models import ModelConfig
from .onnx_export import build_bundle, derive_bundle
from .query_mix import mix_arrays
from .train import TrainConfig, load_checkpoint, save_checkpoint, train_adde

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_input_size(backbone: str, family: str) -> tuple[int, int]:
    """(height, width) when --input-size is not given. ADDE on Lite0 trains at 104x78: in the demo's
    fixed time 104x78, 112x84 and 128x96 score alike (smaller inputs fit more steps) and 104x78
    encodes fastest (docs/performance.md); DAtRNet and FashionSearchNet keep the 128x96 they were
    measured at."""
    if backbone == "efficientnet-lite0":
        return (104, 78) if family == "adde" else (128, 96)
    return (80, 64) if backbone == "compact" else (224, 224)


def _spec_for(args: argparse.Namespace) -> PreprocessSpec:
    """The model's input: its size, and the normalisation its (pretrained) weights expect."""
    h, w = args.input_size or default_input_size(args.backbone, args.family)
    if args.backbone == "efficientnet-lite0":
        return PreprocessSpec(height=h, width=w, mean=LITE_MEAN, std=LITE_STD)
    return PreprocessSpec(height=h, width=w)


def _train(args: argparse.Namespace, catalog, images) -> tuple[Any, Any, Any, PreprocessSpec, TrainConfig, dict[str, float]]:
    if args.family in ("datrnet", "fsn") and args.backbone != "efficientnet-lite0":
        raise SystemExit(f"--family {args.family} reads a frozen EfficientNet-Lite0 trunk; --backbone {args.backbone} "
                         f"cannot feed it: leave --backbone at efficientnet-lite0")
    spec = _spec_for(args)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    train_catalog = catalog.split("train")
    decoded = decode_catalog(train_catalog, images, spec, cache_dir=args.cache)
    timings["decode_train_s"] = time.perf_counter() - t
    train_rows, val_rows = split_validation(train_catalog, seed=args.seed)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    model_config = ModelConfig(architecture=args.family, backbone=args.backbone, attribute_sizes=catalog.schema.sizes,
                               dim=args.dim, width=args.width, height_px=spec.height, width_px=spec.width,
                               lite_split=args.lite_split, chunk_norm=args.chunk_norm, block=args.block,
                               fsn_localize=args.localize)
    t = time.perf_counter()
    result = train_adde(catalog.schema, spec, decoded.subset(train_rows), decoded.subset(val_rows), model_config, config)
    timings["train_s"] = time.perf_counter() - t
    return result, decoded.subset(train_rows), decoded.subset(val_rows), spec, config, timings


def cmd_train(args: argparse.Namespace) -> int:
    catalog, images = load_catalog_from_args(args)
    result, _, _, spec, config, timings = _train(args, catalog, images)
    save_checkpoint(args.out, result, catalog.schema, spec, config)
    print(json.dumps({"checkpoint": str(args.out), **{k: round(v, 1) for k, v in timings.items()},
                      "best": result.best}))
    return 0


def cmd_onnx(args: argparse.Namespace) -> int:
    model, schema, spec, config = load_checkpoint(args.checkpoint)
    labels, images = data_paths(args)  # read with the checkpoint's own schema, whatever --attributes says
    catalog, _ = read_catalog(labels, schema.names, id_column=args.id_column, split_column=args.split_column,
                              schema=schema)
    train = catalog.split("train")
    sample = train.subset(np.arange(min(args.parity_images, len(train))))
    pixels = decode_catalog(sample, images, spec).pixels
    best = config.get("best", {})
    family = args.family or (served_adde_family(best) if model.config.architecture == "adde" and "val_top30" in best
                             else served_family(model.config.architecture))
    arrays = family_files(family, model, schema, spec, train, images, args.reference_per_value,
                          mix=mix_arrays(best, schema.names))
    bundle, parity = build_bundle(model, schema, spec, args.out, pixels, {"training": best},
                                  family, arrays)
    print(json.dumps({"bundle": str(args.out), "family": family, "parity": parity.to_json()}))
    return 0


def _outfit_head(args: argparse.Namespace, out: Path, retriever: Retriever, parts: list[Any],
                 vectors: np.ndarray | None = None) -> dict[str, Any] | None:
    """Outfits derived from the labels (OUT/outfits) and an outfit head over the demo bundle
    (OUT/bundle-outfit), trained on the train split's embeddings (``vectors``, the rows of ``parts`` in
    order, when training already computed them; encoded with ``retriever`` otherwise); skipped, with the
    reason, for a catalog whose labels lack what the default outfit rule needs."""
    from types import SimpleNamespace

    from .outfit_head_train import fit_head_bundle
    from .outfit_rules import OutfitRules
    from .outfits import read_rows, write_outfits

    print("== outfits: derive them from the labels and train the outfit head (bundle-outfit)", flush=True)
    labels = Path(data_paths(args)[0])
    try:
        rules = OutfitRules()
        summary = write_outfits(labels, out / "outfits", rules, 20000, 2000, args.seed, args.split_column, args.id_column)
        rows = {r["id"]: r for r in read_rows(labels, args.id_column)}
        ids = [i for part in parts for i in part.catalog.ids]
        if vectors is None:
            vectors = retriever.encode(list(np.concatenate([part.pixels for part in parts]))).embedding
        steps = min(1500, max(50, summary["train_outfits"] // 4))  # a small catalog's few outfits: fewer steps
        options = SimpleNamespace(projection_dim=32, steps=steps, batch=256, margin=0.3, seed=args.seed,
                                  split_column=args.split_column)
        shutil.rmtree(out / "bundle-outfit", ignore_errors=True)
        meta = fit_head_bundle(out / "bundle", out / "bundle-outfit", ids, vectors, rows,
                               json.loads((out / "outfits" / "train.json").read_text()), rules.category_column,
                               "articleType", options, derived=True, source=str(out / "outfits"))
    except (ValueError, KeyError, OSError) as exc:
        print(f"   outfit head skipped: {exc}", flush=True)
        return None
    return {"bundle": str(out / "bundle-outfit"), "outfits": summary, "categories": meta["categories"],
            "seconds": meta["seconds"]}


EXAMPLE_RESULTS = 8  # results per contact-sheet row


def _examples(retriever: Retriever, encoded: dict[str, bytes], path: Path, seed: int = 1) -> list[dict[str, Any]]:
    """One manipulation query per attribute drawn at random from the gallery, rendered as a contact
    sheet. Drawn among the queries the gallery can answer for most of a row: at least half of
    EXAMPLE_RESULTS items carry the whole target (the new value with everything else kept); a target
    the gallery holds once cannot fill a row, whatever the model."""
    ids, _, codes = retriever.index.vectors_and_codes()  # type: ignore[union-attr]
    schema = retriever.schema
    queries = manipulation_queries(codes, schema.sizes, max_queries=None, seed=seed)
    keys, counts = np.unique(combination_keys(codes, schema.sizes), return_counts=True)
    held = counts[np.searchsorted(keys, combination_keys(queries.targets, schema.sizes))]
    rng = np.random.default_rng(seed)
    rows, printed = [], []
    for a in range(len(schema.attributes)):
        pick = np.flatnonzero(queries.attrs[:, 0] == a)
        if not len(pick):
            continue
        answerable = pick[held[pick] >= (EXAMPLE_RESULTS + 1) // 2]
        qi = int(rng.choice(answerable if len(answerable) else pick))
        qid = ids[queries.rows[qi]]
        value = schema.attributes[a].values[queries.values[qi, 0]]
        change = {schema.names[a]: value}
        results = retriever.search(qid, change=change, k=EXAMPLE_RESULTS)
        rows.append({"query": encoded[qid], "query_labels": schema.decode(codes[queries.rows[qi]]), "change": change,
                     "results": [(encoded[r.id], r.id, r.score, r.attributes) for r in results]})
        printed.append({"query": qid, "change": change, "gallery_holds_target": int(held[qi]),
                        "results_with_new_value": sum(r.attributes[schema.names[a]] == value for r in results),
                        "results": len(results), "top": [(r.id, r.attributes[schema.names[a]]) for r in results[:5]]})
    render_sheet(rows, path, title="fashsdk demo: query (blue), requested change, top results "
                                   "(green = has the new value); random queries whose target the gallery holds "
                                   f"at least {(EXAMPLE_RESULTS + 1) // 2} times")
    return printed


def index_test_split(out: Path, catalog: Any, images: list[str],
                     timings: dict[str, float]) -> tuple[Retriever, dict[str, bytes], float]:
    """OUT/bundle's index of the test split (OUT/index) through the SDK itself; (retriever, the
    test images' bytes, ms per image end to end)."""
    print("== index the test split with fashsdk.Retriever (ONNX Runtime + hnswlib)", flush=True)
    test = catalog.split("test")
    t = time.perf_counter()
    encoded = load_images(images, test.ids)
    timings["read_test_images_s"] = time.perf_counter() - t
    retriever = Retriever(out / "bundle")
    labels = {i: catalog.schema.decode(c) for i, c in zip(test.ids, test.codes)}
    bar, update = progress_bar(len(test), "index test split")
    t = time.perf_counter()
    retriever.add(((i, encoded[i]) for i in test.ids), labels, progress=update)
    bar.close()
    encode_s = time.perf_counter() - t
    if retriever.bundle.attribute_subspaces:
        retriever.index.prepare_similar(range(len(catalog.schema.attributes)))  # type: ignore[union-attr]
    retriever.save_index(out / "index")
    encode_ms = 1000 * encode_s / len(test)
    print(f"   {len(test)} images in {encode_s:.1f} s: {encode_ms:.2f} ms per image end to end "
          f"(JPEG bytes -> vectors in the index), backend {retriever.backend_name}")
    return retriever, encoded, encode_ms


def evaluate_bundles(out: Path, bundles: list[Path], args: argparse.Namespace, images: list[str],
                     timings: dict[str, float], mean_swap: Path | None = None) -> dict[str, Any]:
    """python -m benchmarks.quality over ``bundles`` and OUT/index (mean_swap's value means from the
    chunk_replace bundle ``mean_swap`` when given); its report (OUT/quality.json)."""
    print("== evaluate: the papers' protocol with baselines (python -m benchmarks.quality)", flush=True)
    t = time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.quality", *[a for b in bundles for a in ("--bundle", str(b.resolve()))],
               "--index", str(out.resolve() / "index"),
               "--json", str(out.resolve() / "quality.json"), "--labels", str(Path(data_paths(args)[0]).resolve()),
               "--images", *[str(Path(i).resolve()) for i in images], "--seed", str(args.seed),
               *(["--mean-swap-from", str(mean_swap.resolve())] if mean_swap else [])]
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    timings["evaluate_s"] = time.perf_counter() - t
    return json.loads((out / "quality.json").read_text())


# the blend must lead adde by this many standard errors of the paired lead to be served
SERVE_OTHER_FAMILY_SE = 2.0


def served_adde_family(best: dict[str, Any]) -> str:
    """Which family OUT/bundle serves for an ADDE model: adde, unless the blend of adde's query and
    the weighted chunk_replace query over the same model (export/query_mix.py) is clearly better on
    the validation split. Clearly: its lead on the same queries exceeds SERVE_OTHER_FAMILY_SE
    standard errors, so a lead within the validation split's noise does not swap the served method."""
    if "query_mix" not in best:
        return "adde"
    if best["val_top30_mix_lead"] <= SERVE_OTHER_FAMILY_SE * best["val_top30_mix_lead_se"]:
        return "adde"
    return "blend"


def _label_rerank(bundle_dir: Path, result: Any, train: Any, val: Any, sizes: list[int],
                  config: TrainConfig) -> dict[str, Any]:
    """The served bundle's label rerank (export/label_probe.py) from training's own embeddings of the
    train and validation images, or the bundle's where training kept none; its validation report."""
    print("== label rerank: a linear probe per attribute on the embedding, weights chosen on validation", flush=True)
    if result.embeddings is not None:
        (train_vectors, val_vectors), train_codes = result.embeddings, train.catalog.codes
    else:
        rows = probe_rows(len(train.catalog.codes), config.seed)
        retriever = Retriever(bundle_dir)
        train_vectors, train_codes = retriever.encode(list(train.pixels[rows])).embedding, train.catalog.codes[rows]
        val_vectors = retriever.encode(list(val.pixels)).embedding
    queries = manipulation_queries(val.catalog.codes, sizes, max_queries=config.val_queries, seed=config.seed)
    return add_rerank(bundle_dir, train_vectors, train_codes, val_vectors, val.catalog.codes, queries,
                      seed=config.seed).to_json()


def cmd_demo(args: argparse.Namespace) -> int:
    t_all = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"== fashsdk demo -> {out}", flush=True)
    catalog, images = load_catalog_from_args(args)
    result, train, val, spec, config, timings = _train(args, catalog, images)
    save_checkpoint(out / "checkpoint", result, catalog.schema, spec, config)

    rows = reference_rows(train.catalog.codes, catalog.schema.sizes, config.proto_per_value, config.seed)
    bundles = [out / "bundle"]  # the bundles evaluated
    written = [out / "bundle"]
    t = time.perf_counter()
    family = served_family(args.family)
    mean_swap: Path | None = None
    if family != "adde":
        print(f"== export to ONNX and build the bundle ({family}: each value's mean chunk)", flush=True)
        table = value_table(result.model, catalog.schema, spec, train.catalog.codes[rows], train.pixels[rows])
        bundle, parity = build_bundle(result.model, catalog.schema, spec, out / "bundle", val.pixels[:64],
                                      {"training": result.best}, family,
                                      table_family_arrays(family, result.model, table))
        if family == "fsn":  # the same model without the weighted global representation (the ablation)
            derive_bundle(out / "bundle", out / "bundle-chunk-replace", "chunk_replace", {"value_table": table})
            bundles.append(out / "bundle-chunk-replace")
            written.append(out / "bundle-chunk-replace")
    else:
        print("== export to ONNX and build the bundles (adde, and chunk_replace over the same model)", flush=True)
        family = served_adde_family(result.best)
        folder = {"adde": out / "bundle-adde", "chunk_replace": out / "bundle-chunk-replace", family: out / "bundle"}
        for stale in ("bundle", "bundle-adde", "bundle-chunk-replace"):  # this command's outputs, from an earlier run
            shutil.rmtree(out / stale, ignore_errors=True)
        adde_bundle, parity = build_bundle(result.model, catalog.schema, spec, folder["adde"], val.pixels[:64],
                                           {"training": result.best})
        if result.embeddings is not None:  # training's own embeddings of these images (the bundle's, to 1e-3)
            reference = result.embeddings[0][rows]
        else:
            reference = Retriever(adde_bundle).encode(list(train.pixels[rows])).embedding
        table, _ = value_means(reference, train.catalog.codes[rows], catalog.schema, list(adde_bundle.layout.values()))
        derive_bundle(folder["adde"], folder["chunk_replace"], "chunk_replace", {"value_table": table})
        bundle = adde_bundle
        if family == "blend":  # adde's query blended with the weighted chunk_replace query, as chosen on validation
            bundle = derive_bundle(folder["adde"], folder["blend"], "blend", table_family_arrays(
                "blend", result.model, table, mix_arrays(result.best, catalog.schema.names)))
        mean_swap = folder["chunk_replace"]  # the mean_swap baseline: not evaluated again as a bundle of its own
        written += [path for name, path in folder.items() if name != family]
        if family != "adde":
            bundles.append(folder["adde"])
        others = ", ".join(f"{name} in {path}" for name, path in folder.items() if name != family)
        print(f"   {out / 'bundle'} serves {family}: validation Top-30 adde {result.best['val_top30']:.3f}, "
              f"chunk_replace {result.best['val_top30_chunk_replace']:.3f}, blend {result.best['val_top30_mix']:.3f} "
              f"({others})")
    timings["export_s"] = time.perf_counter() - t
    print(f"   parity on 64 real images: max |diff| {parity.max_abs_diff:.1e}, min cosine {parity.min_cosine:.7f}")
    t = time.perf_counter()
    rerank = _label_rerank(out / "bundle", result, train, val, catalog.schema.sizes, config)
    timings["label_rerank_s"] = time.perf_counter() - t

    retriever, encoded, encode_ms = index_test_split(out, catalog, images, timings)
    quality = evaluate_bundles(out, bundles, args, images, timings, mean_swap)
    top = {int(k): v for k, v in quality["top_k"][quality["rows"][0]].items()}

    rng = np.random.default_rng(0)
    ids = retriever.index.ids  # type: ignore[union-attr]
    schema = catalog.schema
    lat = []
    for _ in range(300):
        qid = ids[int(rng.integers(len(ids)))]
        a = int(rng.integers(len(schema.attributes)))
        value = schema.attributes[a].values[int(rng.integers(schema.sizes[a]))]
        t = time.perf_counter()
        retriever.search(qid, change={schema.names[a]: value}, k=30)
        lat.append(time.perf_counter() - t)
    search_ms = {"p50": 1000 * float(np.median(lat)), "p99": 1000 * float(np.percentile(lat, 99))}
    print(f"   search by id with one change, k=30: p50 {search_ms['p50']:.3f} ms, p99 {search_ms['p99']:.3f} ms")

    t = time.perf_counter()
    outfit = _outfit_head(args, out, retriever, [train, val],
                          np.concatenate(result.embeddings) if result.embeddings is not None else None)
    timings["outfit_head_s"] = time.perf_counter() - t
    examples = _examples(retriever, encoded, out / "examples.png")
    print("   examples.png: " + ", ".join(f"{e['results_with_new_value']} of {e['results']}" for e in examples)
          + " results per row carry the requested value", flush=True)
    photo = catalog.split("train").ids[0]  # a catalog photo that is not in the index, for the quickstart
    (out / "photo.jpg").write_bytes(load_images(images, [photo])[photo])
    total = time.perf_counter() - t_all
    report = {
        "machine": machine(), "bundle": str(out / "bundle"), "bundle_sha256": bundle.sha256(),
        "served_family": family, "model": bundle.manifest["model"]["config"], "train_config": {f.name: getattr(config, f.name) for f in fields(config)},
        "training_time_s": round(timings["train_s"], 1), "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "validation": result.best, "label_rerank": rerank, "parity": parity.to_json(),
        "top_k": quality["top_k"], "top_k_hnsw": quality["top_k_hnsw"], "quality_report": str(out / "quality.md"),
        "queries": quality["queries"], "valid_queries": quality["valid_queries"],
        "encode_ms_per_image": round(encode_ms, 3), "search_ms_per_query": search_ms,
        "gallery_items": len(encoded), "examples": examples, "total_s": round(total, 1), "outfit_head": outfit,
    }
    atomic_write_json(out / "report.json", report)
    print(f"== done in {total / 60:.1f} min: Top-10 {top[10]:.3f}, Top-30 {top[30]:.3f}; "
          f"wrote {', '.join(map(str, written))}, {out}/index, {out}/report.json, {out}/examples.png, "
          f"{out}/photo.jpg" + (f", {out}/bundle-outfit" if outfit else ""), flush=True)
    return 0
