"""The compiled parts of the package (everything else is in pyproject.toml).

`_tarwalk` walks local shards' tar headers; `_digests` hashes downloads into sha1 and sha256 in one
pass with the x86 SHA extensions (on CPUs without them, `core.storage` falls back to hashlib).
"""
from setuptools import Extension, setup

FLAGS = ["-O3", "-Wall", "-Wextra"]

setup(ext_modules=[
    Extension("dataset_assets.core._tarwalk", ["dataset_assets/core/_tarwalk.c"], extra_compile_args=FLAGS),
    Extension("dataset_assets.core._digests", ["dataset_assets/core/_digests.c"], extra_compile_args=FLAGS),
])
