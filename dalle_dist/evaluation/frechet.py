"""The Fréchet distance between two Gaussians fitted to feature sets (FID's formula, any feature space).

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

computed as pytorch-fid (and the original TTUR code) do, so numbers agree with theirs for the same
features:

* ``scipy.linalg.sqrtm`` of the product ``S1 S2``. When it is not finite (a singular product, e.g. fewer
  samples than feature dimensions), both covariances get ``eps`` added to their diagonal and the square
  root is taken again.
* ``S1 S2`` is not symmetric, so rounding can give its square root tiny imaginary parts: they are dropped
  when the diagonal's imaginary parts are all below ``1e-3``; larger ones mean the result is meaningless
  and raise ``ValueError``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

IMAGINARY_TOLERANCE = 1e-3  # pytorch-fid's: larger imaginary parts on the diagonal are not rounding noise


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``features`` ``[N, D]`` (float64); N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"statistics of different shapes: means {mu1.shape} and {mu2.shape}, covariances "
            f"{sigma1.shape} and {sigma2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is handled below and reported by ``set_notes``
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(mu1)) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_TOLERANCE):
            largest = np.max(np.abs(covmean.imag))
            raise ValueError(
                f"the square root of the covariance product has imaginary parts up to {largest:.3g}: the "
                "statistics are too ill-conditioned for a Fréchet distance (use more samples)"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_of(features1: np.ndarray, features2: np.ndarray, eps: float = 1e-6) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets ``[N1, D]`` and ``[N2, D]``."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), eps=eps)


def set_notes(name: str, features: np.ndarray) -> list[str]:
    """What makes a feature set's Gaussian a poor fit, in words: features that never change (the images
    are all alike, or the feature model ignores them) and a singular covariance (fewer images than
    dimensions, or features that depend on each other). Empty when the fit is sound."""
    features = np.asarray(features, dtype=np.float64)
    n, dim = features.shape
    spread = features.std(axis=0)
    if not (spread > 0).any():
        return [
            f"the {name} images' features are all the same: the images are alike or the features ignore them"
        ]
    notes = []
    constant = int((spread == 0).sum())
    if constant:
        notes.append(f"{constant} of the {name} images' {dim} feature dimensions never change")
    rank = int(np.linalg.matrix_rank(np.cov(features, rowvar=False).reshape(dim, -1)))
    if rank < dim:
        fix = f"use more than {dim} images" if n <= dim else "the features depend on each other"
        notes.append(f"the {name} images' covariance is singular (rank {rank} of {dim}: {fix})")
    return notes
