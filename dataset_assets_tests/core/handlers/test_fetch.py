"""Fetching artifacts from a loopback provider: once, sha256 verified, manual and unpinned artifacts explained."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dataset_assets.core.catalog import ArtifactPin, HandlerSource
from dataset_assets.core.handlers.fetch import ArtifactFetchError, fetch_artifacts, resolve_artifacts, verify_artifacts
from dataset_assets.core.handlers.registry import get_handler
from dataset_assets.core.transfer import TransferSettings
from dataset_assets_tests.plain_server import PlainServer
from dataset_assets_tests.static_server import StaticServer

FAST = TransferSettings(max_attempts=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.05)
MNIST = get_handler("mnist")
PLANTS = get_handler("plant_pathology_2020")


def source_for(sha256: dict[str, str], base_url: str | None, name: str = "mnist") -> HandlerSource:
    return HandlerSource(name=name, base_url=base_url,
                         artifacts={artifact: ArtifactPin(sha256=digest) for artifact, digest in sha256.items()})


def test_artifacts_are_fetched_once_then_kept_and_verified_without_network(
        static_folder: Path, static_server: StaticServer, tmp_path: Path) -> None:
    fixture = MNIST.write_fixture(static_folder)
    source = source_for(dict(fixture.sha256), static_server.base_url)
    folder = tmp_path / "artifacts"

    first = fetch_artifacts("digits", MNIST, source, folder, FAST)
    assert first.metadata()["status"] == {artifact.name: "downloaded" for artifact in MNIST.artifacts}
    assert sorted(static_server.requests) == sorted(f"/{artifact.filename}" for artifact in MNIST.artifacts)
    for artifact in MNIST.artifacts:
        assert (folder / artifact.filename).read_bytes() == (static_folder / artifact.filename).read_bytes()

    static_server.stop()
    again = fetch_artifacts("digits", MNIST, source, folder, FAST)
    assert set(again.metadata()["status"].values()) == {"kept"}
    assert again.data_version == first.data_version == verify_artifacts("digits", MNIST, source, folder).data_version


def test_a_kept_artifact_that_no_longer_matches_is_fetched_again(
        static_folder: Path, static_server: StaticServer, tmp_path: Path) -> None:
    fixture = MNIST.write_fixture(static_folder)
    source = source_for(dict(fixture.sha256), static_server.base_url)
    folder = tmp_path / "artifacts"
    fetch_artifacts("digits", MNIST, source, folder, FAST)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"bit rot")
    report = fetch_artifacts("digits", MNIST, source, folder, FAST)
    assert report.metadata()["status"]["train_labels"] == "downloaded"
    assert report.metadata()["sha256"] == dict(fixture.sha256)
    assert static_server.requests.count("/train-labels-idx1-ubyte.gz") == 2


def test_a_wrong_checksum_fails_naming_the_artifact_and_keeps_nothing(
        static_folder: Path, static_server: StaticServer, tmp_path: Path) -> None:
    fixture = MNIST.write_fixture(static_folder)
    source = source_for(dict(fixture.sha256) | {"train_labels": "0" * 64}, static_server.base_url)
    folder = tmp_path / "artifacts"
    with pytest.raises(ArtifactFetchError) as raised:
        fetch_artifacts("digits", MNIST, source, folder, FAST)
    message = str(raised.value)
    assert f"artifact 'train_labels': downloaded from {static_server.base_url}/train-labels-idx1-ubyte.gz " \
           f"has sha256 {fixture.sha256['train_labels']}, expected {'0' * 64}; the file was deleted" in message
    assert not (folder / "train-labels-idx1-ubyte.gz").exists()
    assert (folder / "train-images-idx3-ubyte.gz").exists()


def test_an_artifact_the_provider_lacks_fails_naming_its_file(
        static_folder: Path, static_server: StaticServer, tmp_path: Path) -> None:
    fixture = MNIST.write_fixture(static_folder)
    (static_folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ArtifactFetchError, match=r"artifacts/t10k-labels-idx1-ubyte.gz: .*HTTP 404"):
        fetch_artifacts("digits", MNIST, source_for(dict(fixture.sha256), static_server.base_url),
                        tmp_path / "artifacts", FAST)


def test_a_checksum_mismatch_is_reported_and_deleted_when_another_artifact_fails_to_download(
        static_folder: Path, static_server: StaticServer, tmp_path: Path) -> None:
    fixture = MNIST.write_fixture(static_folder)
    (static_folder / "t10k-labels-idx1-ubyte.gz").unlink()
    source = source_for(dict(fixture.sha256) | {"train_labels": "0" * 64}, static_server.base_url)
    folder = tmp_path / "artifacts"
    with pytest.raises(ArtifactFetchError) as raised:
        fetch_artifacts("digits", MNIST, source, folder, FAST)
    message = str(raised.value)
    assert message.startswith("digits: 2 artifact problem(s): ")
    assert f"artifact 'train_labels': downloaded from {static_server.base_url}/train-labels-idx1-ubyte.gz " \
           f"has sha256 {fixture.sha256['train_labels']}, expected {'0' * 64}; the file was deleted" in message
    assert "artifacts/t10k-labels-idx1-ubyte.gz: " in message and "HTTP 404" in message
    assert sorted(path.name for path in folder.iterdir()) == ["t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"]


def test_a_missing_manual_artifact_says_exactly_where_to_put_it(tmp_path: Path) -> None:
    folder = tmp_path / "home" / "plants" / "artifacts"
    source = source_for({"archive": "a" * 64}, None, name=PLANTS.name)
    with pytest.raises(ArtifactFetchError) as raised:
        fetch_artifacts("plants", PLANTS, source, folder, FAST)
    message = str(raised.value)
    assert "artifact 'archive': must be placed by hand: sign in to Kaggle" in message
    assert f"put the file at {folder / 'plant-pathology-2020-fgvc7.zip'} (sha256 {'a' * 64})" in message


def test_an_artifact_the_catalog_makes_manual_says_where_to_download_it_and_where_to_put_it(tmp_path: Path) -> None:
    folder = tmp_path / "artifacts"
    source = HandlerSource(name="mnist", artifacts={artifact.name: ArtifactPin(url="manual")
                                                    for artifact in MNIST.artifacts})
    with pytest.raises(ArtifactFetchError) as raised:
        fetch_artifacts("digits", MNIST, source, folder, FAST)
    labels = MNIST.artifact("train_labels")
    assert (f"artifact 'train_labels': must be placed by hand: download {labels.url}; then put the file at "
            f"{folder / labels.filename} (sha256 {labels.sha256})") in str(raised.value)


def test_a_manual_artifact_placed_by_hand_is_verified_and_kept(tmp_path: Path) -> None:
    fixture = PLANTS.write_fixture(tmp_path / "artifacts")
    report = fetch_artifacts("plants", PLANTS, source_for(dict(fixture.sha256), None, name=PLANTS.name),
                             fixture.folder, FAST)
    assert report.metadata()["status"] == {"archive": "kept"}


def test_an_artifact_without_a_published_checksum_must_be_pinned(tmp_path: Path) -> None:
    folder = tmp_path / "artifacts"
    fixture = PLANTS.write_fixture(folder)
    with pytest.raises(ArtifactFetchError) as raised:
        fetch_artifacts("plants", PLANTS, HandlerSource(name=PLANTS.name), folder, FAST)
    assert ("artifact 'archive': has no known sha256 (the provider publishes none): pin it in the catalog as "
            f"'datasets.plants.artifacts.archive.sha256'; the file now at {folder / 'plant-pathology-2020-fgvc7.zip'} "
            f"has sha256 {fixture.sha256['archive']}") in str(raised.value)


def test_a_base_url_with_a_query_gets_each_filename_in_its_path_and_keeps_the_query(
        plain_server: PlainServer, tmp_path: Path) -> None:
    fixture = MNIST.write_fixture(tmp_path / "served")
    token = "sv=2022-11-02&sr=c&sig=c2lnbmF0dXJl"  # an Azure SAS for a whole container
    for artifact in MNIST.artifacts:
        plain_server.serve(f"/mnist/{artifact.filename}?{token}", (fixture.folder / artifact.filename).read_bytes())
    source = source_for(dict(fixture.sha256), plain_server.url(f"/mnist/?{token}"))
    report = fetch_artifacts("digits", MNIST, source, tmp_path / "artifacts", FAST)
    assert set(report.metadata()["status"].values()) == {"downloaded"}
    assert report.metadata()["sha256"] == dict(fixture.sha256)


def test_held_bytes_that_do_not_add_up_to_the_pinned_file_are_dropped_and_fetched_once_more(
        plain_server: PlainServer, tmp_path: Path) -> None:
    fixture = MNIST.write_fixture(tmp_path / "served")
    for artifact in MNIST.artifacts:
        plain_server.serve(f"/mnist/{artifact.filename}", (fixture.folder / artifact.filename).read_bytes())
    source, folder = source_for(dict(fixture.sha256), plain_server.url("/mnist")), tmp_path / "artifacts"
    plain_server.drop_after("/mnist/train-images-idx3-ubyte.gz", 2000)
    with pytest.raises(ArtifactFetchError, match="train-images-idx3-ubyte.gz: RemoteProtocolError"):
        fetch_artifacts("digits", MNIST, source, folder, replace(FAST, max_attempts=1))
    held = folder / "train-images-idx3-ubyte.gz.part"
    held.write_bytes(bytes(held.stat().st_size))  # a crash left zeros where the held bytes were

    report = fetch_artifacts("digits", MNIST, source, folder, FAST)
    assert report.metadata()["sha256"] == dict(fixture.sha256)
    assert report.metadata()["status"]["train_images"] == "downloaded"
    assert [(request.range_header, request.status) for request in plain_server.requests
            if request.path.startswith("/mnist/train-images")] == [(None, 200), ("bytes=2000-", 206), (None, 200)]


def test_catalog_url_beats_base_url_which_beats_the_handlers_url(tmp_path: Path) -> None:
    source = HandlerSource(name="mnist", base_url="http://mirror.example/mnist/",
                           artifacts={"test_labels": ArtifactPin(url="http://other.example/labels.gz")})
    urls = {item.artifact.name: item.url for item in resolve_artifacts(MNIST, source, tmp_path)}
    assert urls["train_images"] == "http://mirror.example/mnist/train-images-idx3-ubyte.gz"
    assert urls["test_labels"] == "http://other.example/labels.gz"
    default = {item.artifact.name: (item.url, item.sha256)
               for item in resolve_artifacts(MNIST, HandlerSource(name="mnist"), tmp_path)}
    assert default["train_images"] == (
        "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609")
