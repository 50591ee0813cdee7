"""The few Dagster GraphQL calls a scale-out needs, sent over HTTP to dagster-webserver as the UI sends them.

Launch a run of some assets, launch a partition backfill, list an asset's partitions. Every error
the server answers (a GraphQL error or an `Error`-typed result) raises `GraphQLError` with its message.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from dagster import AssetKey

from dataset_assets.core.errors import DatasetAssetsError

IMPLICIT_ASSET_JOB = "__ASSET_JOB"

LOCATIONS = """
query { repositoriesOrError { __typename
  ... on RepositoryConnection { nodes { name location { name } } }
  ... on Error { message } } }
"""

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) { __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message } } }
"""

LAUNCH_BACKFILL = """
mutation LaunchBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) { __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message } } }
"""

PARTITION_KEYS = """
query PartitionKeys($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) { __typename
    ... on AssetNode { partitionKeysByDimension { name partitionKeys } }
    ... on Error { message } } }
"""

PARTITION_STATUSES = """
query PartitionStatuses($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) { __typename
    ... on AssetNode { assetPartitionStatuses { __typename
      ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions } } }
    ... on Error { message } } }
"""


class GraphQLError(DatasetAssetsError):
    """The webserver refused a query or answered an error result."""


def _key_input(key: AssetKey) -> dict[str, list[str]]:
    return {"path": list(key.path)}


def _result(data: Mapping[str, Any], field: str, success: str) -> Mapping[str, Any]:
    """`data[field]`, which must be of GraphQL type `success`; otherwise its error message raises."""
    result = data[field]
    if result["__typename"] != success:
        raise GraphQLError(f"{field}: {result['__typename']}: {result.get('message', '(no message)')}")
    return result


@dataclass(frozen=True)
class DagsterGraphQL:
    """A dagster-webserver's `/graphql` endpoint, e.g. `http://127.0.0.1:3000/graphql`."""

    url: str
    timeout_seconds: float = 600.0

    def query(self, document: str, variables: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
        response = httpx.post(self.url, json={"query": document, "variables": dict(variables or {})},
                              timeout=self.timeout_seconds)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(f"{self.url}: {body['errors'][0].get('message')}")
        return body["data"]

    def repository(self) -> tuple[str, str]:
        """(code location name, repository name) of the one code location the webserver serves."""
        nodes = _result(self.query(LOCATIONS), "repositoriesOrError", "RepositoryConnection")["nodes"]
        if len(nodes) != 1:
            raise GraphQLError(f"{self.url}: expected one repository, found {len(nodes)}")
        return nodes[0]["location"]["name"], nodes[0]["name"]

    def launch_run(self, assets: Sequence[AssetKey]) -> str:
        """Queue one run materializing `assets` (unpartitioned ones); returns its run id."""
        location, repository = self.repository()
        selector = {"repositoryLocationName": location, "repositoryName": repository, "jobName": IMPLICIT_ASSET_JOB,
                    "assetSelection": [_key_input(key) for key in assets]}
        data = self.query(LAUNCH_RUN, {"executionParams": {"selector": selector, "runConfigData": {}}})
        return str(_result(data, "launchRun", "LaunchRunSuccess")["run"]["runId"])

    def launch_backfill(self, assets: Sequence[AssetKey], partitions: Sequence[str] | None = None) -> str:
        """Launch an asset backfill of `partitions` (None: all of them) of `assets`; returns its id.

        Unpartitioned assets downstream of the partitioned ones run once their parents are done.
        """
        params: dict[str, Any] = {"assetSelection": [_key_input(key) for key in assets]}
        if partitions is None:
            params["allPartitions"] = True
        else:
            params["partitionNames"] = list(partitions)
        data = self.query(LAUNCH_BACKFILL, {"backfillParams": params})
        return str(_result(data, "launchPartitionBackfill", "LaunchBackfillSuccess")["backfillId"])

    def partition_keys(self, asset: AssetKey) -> list[str]:
        """Every partition key of `asset`, as the UI's partitions page lists them."""
        node = _result(self.query(PARTITION_KEYS, {"assetKey": _key_input(asset)}), "assetNodeOrError", "AssetNode")
        return [key for dimension in node["partitionKeysByDimension"] for key in dimension["partitionKeys"]]

    def partition_statuses(self, asset: AssetKey) -> Mapping[str, Any]:
        """Materialized / failed / in-progress partition ranges of `asset`, as the UI's health bar shows them."""
        node = _result(self.query(PARTITION_STATUSES, {"assetKey": _key_input(asset)}), "assetNodeOrError",
                       "AssetNode")
        return node["assetPartitionStatuses"]
