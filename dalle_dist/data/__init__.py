"""Data: the built-in shapes dataset, image + caption folders, Pillow/NumPy transforms, the read order."""

from .errors import DataError
from .folder import FolderDataset
from .synthetic import ShapesDataset
from .transforms import image_grid, label_image, load_image, to_pil

__all__ = ["DataError", "FolderDataset", "ShapesDataset", "image_grid", "label_image", "load_image", "to_pil"]
