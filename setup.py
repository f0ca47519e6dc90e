"""Packaging beyond pyproject.toml: the shipped ``assets/`` tree (presets, templates, the mini worlds' models) travels
in the wheel as package data of ``erase._assets``, so an installed erasekit finds them (``erase.core.locations``)."""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(
            include=["erase", "erase.*", "pipelines", "pipelines.*", "eval", "eval.*", "worlds", "worlds.*"]
        ),
        "erase._assets",
    ],
    package_dir={"erase._assets": "assets"},
    package_data={"erase._assets": ["**/*.json", "**/*.safetensors", "**/*.txt", "**/*.md"]},
)
