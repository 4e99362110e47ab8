"""A tiny real training setup for tests of export.train: a few hundred catalog photos at 40x32,
a train/validation split and a compact ADDE small enough to train in seconds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realdata import real_subset


@dataclass
class TinyTraining:
    schema: Any
    spec: Any
    train: Any  # export.data.ImageSet
    val: Any
    model_config: Any

    def args(self) -> tuple[Any, Any, Any, Any, Any]:
        """train_adde's leading arguments: (schema, spec, train, val, model_config)."""
        return self.schema, self.spec, self.train, self.val, self.model_config


def tiny_training(tmp: Path, n: int, attributes: tuple[str, ...] = ("gender", "masterCategory")) -> TinyTraining:
    from export.data import decode_catalog, split_validation
    from export.models import ModelConfig
    from fashsdk.sources.catalog import read_catalog
    from fashsdk.sources.preprocess import PreprocessSpec

    folder, labels = real_subset(tmp, n)
    catalog, _ = read_catalog(labels, list(attributes), min_count=10)
    spec = PreprocessSpec(height=40, width=32)
    images = decode_catalog(catalog.split("train"), folder, spec)
    train_rows, val_rows = split_validation(images.catalog, 0.2)
    model_config = ModelConfig(backbone="compact", attribute_sizes=catalog.schema.sizes, dim=8, width=8,
                               height_px=spec.height, width_px=spec.width)
    return TinyTraining(catalog.schema, spec, images.subset(train_rows), images.subset(val_rows), model_config)
