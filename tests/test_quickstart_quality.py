"""The quickstart's promise: after `make quickstart` every digit class is recognisable (slow: the full preset).

Measured, not eyeballed, on 200 samples from the final checkpoint, in the digits' own 8×8 space:
- every class is read back as the class it was generated for in at least 80 % of its samples by a classifier
  fitted on the real digits (an RBF SVM);
- the samples lie as close to the real digits as real digits lie to each other: the median distance from a
  sample to its nearest real digit is at most 1.1 × the median nearest-neighbour distance among the real
  digits. Smeared samples fail this although a lenient classifier still reads them: the former preset
  (600 steps at 16×16), whose 1s were blobs, scored 1.19 with every class read at ≥ 95 %; this one 1.00.
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


def realism(samples: torch.Tensor) -> float:
    """Median distance from each sample to its nearest real digit over the median nearest-neighbour distance
    among the real digits themselves (1.0: as close to the data as the data is to itself)."""
    from rollgraph.stages.load import load_digits_images

    real = to_digit_features(load_digits_images(8, 1)[0])
    among = torch.cdist(real, real)
    among.fill_diagonal_(float("inf"))
    return float(torch.cdist(to_digit_features(samples), real).min(1).values.median() / among.min(1).values.median())


def test_the_measures_accept_real_digits_and_reject_noise_and_blur():
    from rollgraph.stages.load import load_digits_images

    images, labels = load_digits_images(16, 1)
    assert min(per_class_accuracy(images, labels, 16)) > 0.95
    assert realism(images) < 1.0  # seen through the 16×16 resize, real digits stay nearest to themselves
    noise = torch.rand(200, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert min(per_class_accuracy(noise, torch.arange(200) % 10, 16)) < 0.5
    assert realism(noise) > 2
    held_out = images[1::2]
    blurred = F.avg_pool2d(F.pad(held_out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert realism(blurred) > realism(held_out) + 0.1


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
    assert realism(samples) <= 1.1
