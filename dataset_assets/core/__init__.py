"""Plain-Python core: nothing below this package imports dagster."""
