"""Sample-quality measures on scikit-learn's digits (8×8, pixels in [-1, 1]), no download.

* ``DigitsJudge``: a small MLP classifier (64 -> 256 -> 64 -> 10, ReLU) trained once, deterministically
  (seed 0, full-batch Adam, light Gaussian-noise augmentation), on the training split. Its 64-d
  penultimate activations are the feature space of the Fréchet distance; its argmax is the class-adherence
  judge. Its held-out accuracy is reported with the results.
* ``frechet_distance``: ||mu_a - mu_b||^2 + tr(S_a + S_b - 2·(S_a S_b)^(1/2)) on those features (the FID
  formula of Heusel et al. 2017, arXiv 1706.08500, on a digits classifier instead of Inception).
* ``nn_distance``: mean L2 distance (pixels) from each sample to its nearest training image, a
  memorisation measure: far below the value for held-out real images = copying; far above = off-manifold.
* ``diversity``: mean pairwise L2 distance within each class, divided by the same for real images.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg
from torch import nn

NUM_TRAIN = 1500  # digits has 1,797 images: the first 1,500 train, the last 297 are held out


@dataclass
class Digits:
    images: torch.Tensor  # (1797, 1, 8, 8) in [-1, 1]
    labels: torch.Tensor

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[:NUM_TRAIN], self.labels[:NUM_TRAIN]

    @property
    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[NUM_TRAIN:], self.labels[NUM_TRAIN:]


def load_digits(resolution: int = 8) -> Digits:
    from rollgraph.stages.load import load_digits_images

    images, labels = load_digits_images(resolution, 1)
    return Digits(images, labels)


class DigitsJudge:
    def __init__(self, digits: Digits, iters: int = 400):
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(digits.images[0].numel(), 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)
        params = [*self.body.parameters(), *self.head.parameters()]
        opt = torch.optim.Adam(params, lr=3e-3, weight_decay=1e-4)
        x, y = digits.train
        g = torch.Generator().manual_seed(0)
        for _ in range(iters):
            noisy = x + 0.1 * torch.randn(x.shape, generator=g)
            loss = nn.functional.cross_entropy(self.head(self.body(noisy)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.body.eval()
        self.head.eval()
        hx, hy = digits.held_out
        self.held_out_accuracy = float((self.predict(hx) == hy).float().mean())

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> np.ndarray:
        return self.body(x.float()).double().numpy()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.float())).argmax(1)

    def adherence(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of samples the judge assigns to the class they were generated for."""
        return float((self.predict(x) == labels).float().mean())

    def frechet(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return frechet_distance(self.features(a), self.features(b))


def frechet_distance(fa: np.ndarray, fb: np.ndarray) -> float:
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        covmean = linalg.sqrtm(sa @ sb)
    if caught or not np.isfinite(covmean).all():  # near-singular product: regularise as the reference FID code does
        off = np.eye(sa.shape[0]) * 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm((sa + off) @ (sb + off))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))


def nn_distance(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over samples of the L2 distance to the nearest reference image."""
    d = torch.cdist(samples.flatten(1).double(), reference.flatten(1).double())
    return float(d.min(dim=1).values.mean())


def mean_pairwise(x: torch.Tensor) -> float:
    n = len(x)
    if n < 2:
        return float("nan")
    d = torch.cdist(x.flatten(1).double(), x.flatten(1).double())
    return float(d.sum() / (n * (n - 1)))


def diversity(samples: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor) -> float:
    """Mean within-class pairwise distance of the samples over that of real images (1 = as diverse as the data)."""
    ratios = []
    for c in labels.unique().tolist():
        gen, ref = samples[labels == c], real[real_labels == c]
        if len(gen) > 1 and len(ref) > 1:
            ratios.append(mean_pairwise(gen) / mean_pairwise(ref))
    return float(np.mean(ratios)) if ratios else float("nan")
