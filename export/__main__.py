"""python -m export {train,onnx,demo,label-rerank,outfits,outfit-head,flam}: train a model, export a bundle of a
model family, run the whole demo, give a bundle a label rerank, derive outfits from catalog labels, train the outfit
head, or run FLAM."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .catalog_args import add_catalog_args, add_config_arguments


# what --family datrnet changes in the defaults: the paper's per-attribute triplets (no combination
# triplet, no stage 2: its queries swap in value means), the ASE networks' base width and trunk split
DATRNET_DEFAULTS = {"lite_split": 3, "width": 16, "w_attr_triplet": 1.0, "w_label_triplet": 0.0, "stage2_epochs": 0,
                    "trunk_variants": 2}
# FashionSearchNet: frozen Lite0 to its stride-16 map (blocks 0-10), conv6/conv7 and the rest trained;
# classification + soft triplets
FSN_DEFAULTS = {"lite_split": 11, "w_attr_triplet": 1.0, "w_label_triplet": 0.0, "stage2_epochs": 0,
                "trunk_variants": 2}
FAMILY_DEFAULTS = {"datrnet": DATRNET_DEFAULTS, "fsn": FSN_DEFAULTS}


def _family_of(argv: list[str] | None) -> str:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--family", default="adde")
    return pre.parse_known_args(argv)[0].family


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    from .backbones import BACKBONES
    from .datrnet import BLOCKS
    from .train import TrainConfig

    parser.add_argument("--family", default="adde", choices=["adde", "datrnet", "fsn"],
                        help="the model to train: adde (served as adde or chunk_replace), datrnet (DAtRNet, "
                             "served as chunk_replace) or fsn (FashionSearchNet, served as fsn); datrnet and fsn "
                             "change the defaults of --lite-split, the triplet weights and --stage2-epochs")
    parser.add_argument("--block", default="ase", choices=list(BLOCKS),
                        help="datrnet: ase (the paper's), msf (multi-scale only) or residual (the ablations)")
    parser.add_argument("--localize", action=argparse.BooleanOptionalAction, default=True,
                        help="fsn: pool each attribute's box (--no-localize: the whole map, the paper's ablation)")
    parser.add_argument("--backbone", default="efficientnet-lite0", choices=list(BACKBONES),
                        help="efficientnet-lite0 is ImageNet-pretrained; the others start from random weights")
    parser.add_argument("--chunk-norm", action=argparse.BooleanOptionalAction, default=True,
                        help="normalise each attribute chunk (every attribute 1/A of the norm) instead of the whole vector")
    parser.add_argument("--lite-split", type=int, default=11,
                        help="efficientnet-lite0: blocks before this one stay frozen (0-16, default 11); datrnet: "
                             "the frozen trunk whose activations feed the attribute networks (1-6, default 3); "
                             "fsn: blocks from this one to block 10 are fine-tuned (1-11; default 11: none, "
                             "only conv6/conv7 on)")
    parser.add_argument("--dim", type=int, default=64, help="embedding dimensions per attribute (paper: 340)")
    parser.add_argument("--width", type=int, default=24,
                        help="compact backbone base width; datrnet: the stem's channels (ASE modules 2x, 4x, 8x)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input height and width (default 80 64 for compact; for efficientnet-lite0 104 78 with "
                             "--family adde, 128 96 for datrnet and fsn; 224 224 otherwise)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"), help="decoded-pixel cache folder")
    add_config_arguments(parser, TrainConfig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    family = _family_of(argv if argv is not None else sys.argv[1:])

    p = sub.add_parser("train", help="train ADDE and save a checkpoint (state dict + JSON config)")
    add_catalog_args(p)
    _add_train_args(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    if family in FAMILY_DEFAULTS:
        p.set_defaults(**FAMILY_DEFAULTS[family])

    p = sub.add_parser("onnx", help="export a checkpoint to a bundle (ONNX + the family's files + manifest)")
    add_catalog_args(p)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--family", default=None, choices=["adde", "chunk_replace", "fsn", "blend"],
                   help="how queries change: adde (memory block), chunk_replace (mean value chunks), fsn (mean "
                        "value chunks, the changed one weighted) or blend (adde's and fsn's queries mixed, ADDE "
                        "checkpoints only); default: for an ADDE checkpoint the family its "
                        "training chose on validation (as demo serves), chunk_replace for DAtRNet, fsn for "
                        "FashionSearchNet")
    p.add_argument("--reference-per-value", type=int, default=100,
                   help="chunk_replace: training images per value averaged into its representation")
    p.add_argument("--out", type=Path, required=True, help="bundle directory")
    p.add_argument("--parity-images", type=int, default=64)

    p = sub.add_parser("demo", help="train, export, index the test split, evaluate, draw examples")
    add_catalog_args(p)
    _add_train_args(p)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    # under 15 minutes on 2 cores with set-up, on AVX2-only CPUs too: 9 minutes of stage 1 (trunk caching
    # included), 30 s of stage 2, 20-30 s for the outfit head; the rest scales with the machine
    p.set_defaults(lite_split=12, trunk_variants=2, stage1_time_budget_s=540, stage2_time_budget_s=30)
    if family in FAMILY_DEFAULTS:  # the same stage-1 budget, the family's trunk and losses
        p.set_defaults(**FAMILY_DEFAULTS[family])

    from .label_rerank_command import add_arguments as add_rerank_arguments

    p = sub.add_parser("label-rerank", help="fit a bundle's label rerank on the catalog's training split and choose "
                                            "its weights on validation (python -m export demo does this itself)")
    add_rerank_arguments(p)

    from .outfits import add_arguments as add_outfit_arguments

    p = sub.add_parser("outfits", help="derive outfits (train/test, fill-in-the-blank, compatibility) from labels")
    add_outfit_arguments(p)

    from .outfit_head_train import add_arguments as add_head_arguments

    p = sub.add_parser("outfit-head", help="train the outfit head on a bundle's embeddings; write a bundle with it")
    add_head_arguments(p)

    from .flam_command import add_arguments as add_flam_arguments

    p = sub.add_parser("flam", help="FLAM: retrieval features, embedders and manipulator, the two-graph bundle, "
                                    "the test split's index and quality report")
    add_flam_arguments(p)

    args = parser.parse_args(argv)
    if hasattr(args, "stage2_holdout"):
        from .train import check_holdout_share

        try:
            check_holdout_share(args.stage2_holdout)
        except ValueError as exc:
            parser.error(str(exc))
    if args.command == "outfits":
        return _outfits(parser, args)
    if args.command == "outfit-head":
        from .outfit_head_train import run as run_head

        try:
            return run_head(args)
        except (ValueError, OSError) as exc:
            print(f"export outfit-head: error: {exc}", file=sys.stderr)
            return 2
    if args.command == "label-rerank":
        from fashsdk.errors import FashsdkError

        from .label_rerank_command import run as run_rerank

        try:
            return run_rerank(args)
        except (ValueError, OSError, FashsdkError) as exc:
            print(f"export label-rerank: error: {exc}", file=sys.stderr)
            return 2
    if args.command == "flam":
        from .flam_command import cmd_flam

        try:
            return cmd_flam(args)
        except ValueError as exc:
            print(f"export flam: error: {exc}", file=sys.stderr)
            return 2
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    from . import pipeline
    from .train import GuardFailed

    try:
        return {"train": pipeline.cmd_train, "onnx": pipeline.cmd_onnx, "demo": pipeline.cmd_demo}[args.command](args)
    except GuardFailed as exc:  # --strict: the model did not clearly beat its baselines
        print(f"export: error: {exc}", file=sys.stderr)
        return 3


def _outfits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import json

    from .outfit_rules import OutfitRules
    from .outfits import write_outfits

    labels = args.labels or (args.data / "styles.csv" if args.data else None)
    if labels is None or not labels.is_file():
        parser.error(f"no labels CSV at {labels}: give --data FOLDER (with styles.csv) or --labels CSV")
    try:
        rules = OutfitRules.load(args.rules)
        summary = write_outfits(labels, args.out, rules, args.train_outfits, args.test_outfits, args.seed,
                                args.split_column, args.id_column)
    except (ValueError, OSError) as exc:
        print(f"export outfits: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary | {"out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
