"""Fixtures for handler tests: a loopback static file server standing in for dataset providers."""
from dataset_assets_tests.static_server import static_folder, static_server  # noqa: F401
