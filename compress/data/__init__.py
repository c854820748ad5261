"""The data layer: datasets held in memory as uint8 (N, C, H, W) images with int64 labels.

Models take float images in [0, 1]; :class:`ImageDataset` converts per item and the normalization statistics
travel with the splits (:attr:`DatasetSplits.mean` / ``std``) for the model to apply.
"""

from compress.data.base import DatasetSplits, ImageDataset, Split
from compress.data.load import SOURCES, load_dataset
from compress.data.loaders import ReferenceBatches, augment_batch, calibration_batches, make_loader, reference_batches

__all__ = [
    "SOURCES",
    "DatasetSplits",
    "ImageDataset",
    "Split",
    "augment_batch",
    "calibration_batches",
    "reference_batches",
    "ReferenceBatches",
    "load_dataset",
    "make_loader",
]
