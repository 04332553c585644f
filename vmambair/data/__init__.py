"""Datasets (registered in basicsr's DATASET_REGISTRY) and image reading."""
from .image_io import DataError, read_image, to_float_bgr  # noqa: F401
from .paired_dataset import (PairedImageFolderDataset, ResumableBatchSampler,  # noqa: F401
                             TrainableDataset, pair_files)
from .realesrgan_dataset import RealESRGANGTDataset  # noqa: F401,E402  (real-world SR, GT only)
from .single_dataset import SingleImageFolderDataset  # noqa: F401,E402  (input-only test sets, NIQE)
from .quickstart import QuickstartRainDataset  # noqa: F401,E402  (quick start: scikit-image photos + synthetic rain)
