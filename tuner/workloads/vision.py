"""The seeds' SimpleCNN on MNIST-like image sets (MNIST, Fashion-MNIST, offline subsets).

The whole data set is moved to the trial's device once: the images are small, and feeding a
GPU from CPU tensors batch by batch costs more than the model (ANCHORS: one trial is
launch-bound at about 2 ms a step).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from pydantic import field_validator
from torch import nn
from torch.nn import functional as F

from tuner.workloads.base import MiniBatchTask, Options, TrialContext, Workload


class SimpleCNN(nn.Module):
    """conv 1→32 3×3, pool, conv 32→64 3×3, pool, fc → 128, fc 128 → classes (the seeds' model).

    For 28×28 images the first dense layer is 3136 → 128, as in the seeds; smaller images
    (the 8×8 digits) shrink it accordingly.
    """

    def __init__(self, image_size: tuple[int, int], num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        height, width = image_size[0] // 4, image_size[1] // 4
        self.fc1 = nn.Linear(64 * height * width, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class VisionOptions(Options):
    """Which image set (required: a study never gets another one silently) and where it lives."""

    dataset: str
    data_dir: str | None = None

    @field_validator("dataset")
    @classmethod
    def _known(cls, name: str) -> str:
        from tuner.workloads.datasets import dataset

        dataset(name)  # raises naming the data sets there are
        return name


@functools.lru_cache(maxsize=2)
def _device_data(
    options: VisionOptions, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The image set as tensors on `device`, loaded once per worker process and shared by its
    trials (read-only): a stack of K trials would otherwise hold K copies."""
    from tuner.workloads.datasets import load_dataset

    data = load_dataset(options.dataset, Path(options.data_dir) if options.data_dir else None)

    def images(array) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32).unsqueeze(1).to(device)

    def labels(array) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.long).to(device)

    return (
        images(data.train_images),
        labels(data.train_labels),
        images(data.val_images),
        labels(data.val_labels),
        data.num_classes,
    )


class ImageClassification(MiniBatchTask):
    """Cross-entropy training of SimpleCNN on a data set resident on the trial's device."""

    def __init__(self, options: VisionOptions, context: TrialContext):
        self.train_x, self.train_y, self.val_x, self.val_y, classes = _device_data(
            options, context.device
        )
        torch.manual_seed(context.seed)
        self.model = SimpleCNN(tuple(self.train_x.shape[-2:]), classes).to(context.device)
        self.batch_size = context.batch_size

    def sample_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")

    def validation_terms(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {
            "val_loss": F.cross_entropy(outputs, targets, reduction="none"),
            "val_accuracy": (outputs.argmax(1) == targets).float(),
        }


def _require_data(options: VisionOptions) -> None:
    from tuner.workloads.datasets import require_files

    require_files(options.dataset, Path(options.data_dir) if options.data_dir else None)


WORKLOADS = [
    Workload(
        "cnn",
        "the seeds' SimpleCNN (2 conv, 2 dense) on an MNIST-like image set",
        VisionOptions,
        {"val_accuracy": "maximize", "val_loss": "minimize"},
        "val_accuracy",
        ImageClassification,
        preflight=_require_data,
    )
]
