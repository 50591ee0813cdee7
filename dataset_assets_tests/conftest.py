"""Fixtures shared by every test package."""
from dataset_assets_tests.demo.fixtures import demo_server, demo_source  # noqa: F401
