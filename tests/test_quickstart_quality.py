"""The quickstart's promise: after `make quickstart` every digit class is recognisable (slow: the full preset).

Recognisable is measured, not eyeballed: a classifier fitted on the real digits (an RBF SVM, 98-99 % on
held-out real digits) reads the class of each sample from the final checkpoint, and every class must be
read back as the class it was generated for in at least 80 % of its samples.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from rollgraph.graph.cli import main
from safetensors import safe_open


def to_digit_features(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] -> (N, 64): 8×8 area averages in the 0..16 scale of scikit-learn's digits."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    return (F.adaptive_avg_pool2d(x, 8) * 16).flatten(1)


def real_digit_classifier(resolution: int):
    """An SVM on the real digits, seen through the same resize the quickstart trains on."""
    from rollgraph.stages.load import load_digits_images
    from sklearn.svm import SVC

    images, labels = load_digits_images(resolution, 1)
    return SVC(gamma="scale", C=10).fit(to_digit_features(images).numpy(), labels.numpy())


def per_class_accuracy(samples: torch.Tensor, labels: torch.Tensor, resolution: int) -> list[float]:
    predicted = torch.as_tensor(real_digit_classifier(resolution).predict(to_digit_features(samples).numpy()))
    return [float((predicted[labels == c] == c).float().mean()) for c in range(10)]


def test_the_classifier_reads_real_digits_and_rejects_noise():
    from rollgraph.stages.load import load_digits_images

    images, labels = load_digits_images(16, 1)
    assert min(per_class_accuracy(images, labels, 16)) > 0.95
    noise = torch.rand(200, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert min(per_class_accuracy(noise, torch.arange(200) % 10, 16)) < 0.5


@pytest.mark.slow
def test_every_class_of_the_quickstart_is_recognisable(tmp_path):
    run = tmp_path / "qs"
    assert main(["run", "quickstart", "--output_dir", str(run), "--device", "cpu"]) == 0
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--num", "200", "--seed", "1", "--out", str(out)]) == 0
    with safe_open(str(out / "samples.safetensors"), "pt") as f:
        samples, labels = f.get_tensor("samples"), f.get_tensor("class_labels")
    accuracy = per_class_accuracy(samples, labels, samples.shape[-1])
    assert min(accuracy) >= 0.8, [round(a, 2) for a in accuracy]
