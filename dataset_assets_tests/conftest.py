"""Fixtures shared by every test package: the demo source and server, and loopback static and plain-link
servers standing in for dataset providers."""
from dataset_assets_tests.demo.fixtures import demo_server, demo_source  # noqa: F401
from dataset_assets_tests.plain_server import plain_server  # noqa: F401
from dataset_assets_tests.static_server import static_folder, static_server  # noqa: F401
