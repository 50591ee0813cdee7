"""The compiled part of the package: `dataset_assets.core._tarwalk` (everything else is in pyproject.toml)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("dataset_assets.core._tarwalk", ["dataset_assets/core/_tarwalk.c"],
                             extra_compile_args=["-O3", "-Wall", "-Wextra"])])
