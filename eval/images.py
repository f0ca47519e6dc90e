"""Folders of user images -> float tensors (FID reference sets); shared with the methods' user forget sets."""

from erase.core.data import IMAGE_SUFFIXES, image_files, load_images

__all__ = ["IMAGE_SUFFIXES", "image_files", "load_images"]
