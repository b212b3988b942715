"""Data: image transforms (Pillow/NumPy); datasets arrive with the training scripts."""

from .transforms import image_grid, to_pil

__all__ = ["image_grid", "to_pil"]
