"""Datasets: manifests, image decoding and validation, the decoded-image cache, built-in data, views."""

from qmix_cli.data.manifest import Dataset, create_dataset

__all__ = ["Dataset", "create_dataset"]
