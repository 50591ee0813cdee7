"""Partitions definitions, one per catalog dataset."""
from __future__ import annotations

from dagster import DynamicPartitionsDefinition


def sequence_partitions(dataset: str) -> DynamicPartitionsDefinition:
    """One partition per published sequence, registered when `url_manifest` is materialized."""
    return DynamicPartitionsDefinition(name=f"{dataset}_sequences")
