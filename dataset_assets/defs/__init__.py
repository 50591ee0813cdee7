"""The Dagster layer: thin wiring of core functions into assets, resources and Definitions."""
