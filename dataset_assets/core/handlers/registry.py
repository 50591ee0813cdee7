"""The registered raw-artifact handlers, by name: a catalog dataset of kind `handler` picks one."""
from __future__ import annotations

from dataset_assets.core.handlers.base import Handler
from dataset_assets.core.handlers.coco import CocoMultiLabelHandler
from dataset_assets.core.handlers.mnist import MnistHandler
from dataset_assets.core.handlers.plant_pathology import PlantPathologyHandler

HANDLERS: dict[str, Handler] = {
    handler.name: handler for handler in (MnistHandler(), PlantPathologyHandler(), CocoMultiLabelHandler())
}


def handler_names() -> list[str]:
    return sorted(HANDLERS)


def get_handler(name: str) -> Handler:
    if name not in HANDLERS:
        raise KeyError(f"no handler named {name!r} (registered: {', '.join(handler_names())})")
    return HANDLERS[name]
