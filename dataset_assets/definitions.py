"""The code location: `dagster dev -m dataset_assets.definitions` or `workspace.yaml` loads `defs`."""
from dataset_assets.core.catalog import load_catalog
from dataset_assets.defs.builder import build_definitions

defs = build_definitions(load_catalog())
