"""`dataset-assets versioned prepare|pack|publish|download` end to end against moto's standalone S3 server."""
from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from dataset_assets.cli import main
from dataset_assets.core.catalog import CATALOG_ENV
from dataset_assets_tests import s3_fixtures
from dataset_assets_tests.cli_interrupt import interrupt_cli
from dataset_assets_tests.core.handlers.helpers import write_catalog
from dataset_assets_tests.core.test_publish import FILES, make_public
from dataset_assets_tests.core.test_versioned import DS, V1, V2, make_assets, packed_tree, tree, versioned_body
from dataset_assets_tests.s3_fixtures import S3Bucket

moto_endpoint = s3_fixtures.moto_endpoint
moto_client = s3_fixtures.moto_client
s3_bucket = s3_fixtures.s3_bucket


def versioned(action: str, path: Path, *extra: str, version: str = V1) -> list[str]:
    return ["versioned", action, "--dataset", DS, "--version", version, "--path", str(path), *extra]


@pytest.fixture
def catalog_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_bucket: S3Bucket) -> S3Bucket:
    """A catalog whose dataset publishes to `s3_bucket` and downloads from its public URL."""
    public = make_public(s3_bucket)
    publish = {"bucket": s3_bucket.name, "prefix": "public", "part_size_mib": 5, "concurrency": 4,
               "endpoint_url": s3_bucket.endpoint_url}
    body = versioned_body(f"{public}/public/{DS}", publish=publish, annotations={}, assets={}, features={})
    write_catalog(tmp_path, {DS: body})
    monkeypatch.setenv(CATALOG_ENV, str(tmp_path / "catalog.yaml"))
    return s3_bucket


def produce(root: Path, version: str) -> Path:
    folder = make_assets(root / DS / version)
    (folder / "features").mkdir()
    (folder / "features" / "sbert_features.npy").write_bytes(version.encode() * 100)
    return folder


def test_prepare_pack_publish_then_download_gives_the_same_tree(catalog_for: S3Bucket, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    producer = tmp_path / "producer"
    for version in (V1, V2):
        folder = produce(producer, version)
        for action in ("prepare", "pack", "publish"):
            assert main(versioned(action, producer, version=version)) == 0, capsys.readouterr().err
        assert main(versioned("download", tmp_path / "consumer", version=version)) == 0
        local = tmp_path / "consumer" / DS / version
        assert (local / "annotations.json.gz").read_bytes() == (folder / "annotations.json.gz").read_bytes()
        assert tree(local / "assets") == packed_tree(folder / "assets")
        assert tree(local / "features") == packed_tree(folder / "features")
    assert sorted(catalog_for.keys()) == sorted(f"public/{DS}/{v}/{name}" for v in (V1, V2) for name in FILES)

    capsys.readouterr()
    assert main(versioned("publish", producer)) == 0
    assert "3 file(s): 0 uploaded, 3 already published" in capsys.readouterr().out


def test_pack_leaves_out_default_and_extra_excludes(catalog_for: S3Bucket, tmp_path: Path) -> None:
    folder = produce(tmp_path, V1)
    assert main(versioned("pack", tmp_path, "--exclude", "*.jpg")) == 0
    with tarfile.open(folder / "assets.tar") as tar:
        names = tar.getnames()
    assert all(name.startswith("assets/") for name in names)
    assert {Path(name).name for name in names} == {"obj000.glb", "obj001.glb", "obj002.glb", "annotations.json"}
    manifest = json.loads((folder / "assets.tar.manifest.json").read_text())
    assert "*.jpg" in manifest["excludes"] and "thor_metadata.json" in manifest["excludes"]


def test_a_malformed_object_annotation_exits_2_naming_file_and_field(catalog_for: S3Bucket, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = produce(tmp_path, V1)
    bad = folder / "assets" / "obj002" / "annotations.json"
    bad.write_text(json.dumps({"uid": "obj002", "category": "chair", "scale": "big"}))
    assert main(versioned("prepare", tmp_path)) == 2
    assert f"error: {bad}: field 'scale' must be a positive number (got 'big')" in capsys.readouterr().err
    assert not (folder / "annotations.json.gz").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--version", "2023-07-28"], "command line: field '--version' must be a date version"),
     (["--version", "2024_01_01"], "command line: field '--version' is not a version of this dataset"),
     (["--dataset", "nope"], "field 'datasets' is not a dataset in the catalog")],
)
def test_bad_arguments_exit_2_naming_the_field(catalog_for: S3Bucket, tmp_path: Path, args: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*versioned("download", tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_publish_without_packing_first_names_the_missing_file(catalog_for: S3Bucket, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = produce(tmp_path, V1)
    assert main(versioned("prepare", tmp_path)) == 0
    assert main(versioned("publish", tmp_path)) == 2
    assert f"missing {folder / 'assets.tar'}, {folder / 'features.tar'}" in capsys.readouterr().err
    assert catalog_for.keys() == []


def test_publish_of_annotations_that_describe_other_objects_than_the_repacked_assets_exits_2_uploading_nothing(
        catalog_for: S3Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = produce(tmp_path, V1)
    for action in ("prepare", "pack"):
        assert main(versioned(action, tmp_path)) == 0
    shutil.rmtree(folder / "assets" / "obj001")
    assert main(versioned("pack", tmp_path)) == 0
    capsys.readouterr()

    assert main(versioned("publish", tmp_path)) == 2

    err = capsys.readouterr().err
    assert f"error: {folder / 'annotations.json.gz'} and {folder / 'assets.tar.manifest.json'}" in err
    assert "only in annotations.json.gz: obj001" in err and "run `prepare` again" in err
    assert catalog_for.keys() == []
    assert main(versioned("prepare", tmp_path)) == 0
    assert main(versioned("publish", tmp_path)) == 0


def test_download_of_a_component_the_dataset_lacks_exits_2(catalog_for: S3Bucket, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*versioned("download", tmp_path), "--component", "base_data"]) == 2
    assert ("command line: field '--component' is not a component of this dataset "
            "(components: annotations, assets, features) (got 'base_data')") in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("--part-size-mib", "1"), ("--part-size-mib", "5121"),
                                             ("--concurrency", "0"), ("--destination", "bucket/prefix")])
def test_bad_publish_flags_exit_2_naming_the_flag(catalog_for: S3Bucket, tmp_path: Path, flag: str, value: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    produce(tmp_path, V1)
    for action in ("prepare", "pack"):
        assert main(versioned(action, tmp_path)) == 0
    capsys.readouterr()

    assert main([*versioned("publish", tmp_path), flag, value]) == 2

    assert f"error: command line: field '{flag}' " in capsys.readouterr().err
    assert catalog_for.keys() == []


def test_download_over_an_extract_limit_exits_2_naming_it_and_a_raised_limit_extracts(
        catalog_for: S3Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    producer = tmp_path / "producer"
    folder = produce(producer, V1)
    for action in ("prepare", "pack", "publish"):
        assert main(versioned(action, producer)) == 0
    consumer = tmp_path / "consumer"
    capsys.readouterr()

    assert main([*versioned("download", consumer), "--max-extract-members", "2"]) == 2
    assert "more than 2 members (raise extract.max_members in the catalog, or --max-extract-members, " \
           "for a larger archive)" in capsys.readouterr().err
    assert not (consumer / DS / V1 / "assets").exists()

    assert main([*versioned("download", consumer), "--max-extract-members", "100",
                 "--max-extract-bytes", str(1 << 20)]) == 0
    assert tree(consumer / DS / V1 / "assets") == packed_tree(folder / "assets")


@pytest.mark.parametrize(("flag", "value"), [("--max-extract-bytes", "0"), ("--max-extract-members", "-1")])
def test_bad_extract_limit_flags_exit_2_naming_the_flag_and_value(catalog_for: S3Bucket, tmp_path: Path, flag: str,
                                                                  value: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*versioned("download", tmp_path), flag, value]) == 2
    assert f"error: command line: field '{flag}' must be at least 1 (got {value})" in capsys.readouterr().err
    assert not (tmp_path / DS).exists()


def test_publish_to_an_unusable_s3_endpoint_exits_2_naming_it(catalog_for: S3Bucket, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    produce(tmp_path, V1)
    for action in ("prepare", "pack"):
        assert main(versioned(action, tmp_path)) == 0

    assert main([*versioned("publish", tmp_path), "--s3-endpoint-url", "notaurl"]) == 2

    assert "field 'endpoint_url' is not a usable S3 endpoint (Invalid endpoint: notaurl)" in capsys.readouterr().err


def test_publish_of_a_file_that_misses_its_catalog_pin_exits_2_and_uploads_nothing(
        catalog_for: S3Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Published, a file other than the pinned one would be downloaded, refused and deleted by every consumer."""
    folder = produce(tmp_path / "producer", V1)
    for action in ("prepare", "pack"):
        assert main(versioned(action, tmp_path / "producer")) == 0
    pinned = hashlib.sha256((folder / "assets.tar").read_bytes()).hexdigest()
    catalog = yaml.safe_load((tmp_path / "catalog.yaml").read_text())
    catalog["datasets"][DS]["components"]["assets"] = {"sha256": {V1: pinned}}
    write_catalog(tmp_path, catalog["datasets"])
    (folder / "assets" / "obj000" / "albedo.jpg").write_bytes(b"retouched after the pin")
    assert main(versioned("pack", tmp_path / "producer")) == 0
    repacked = hashlib.sha256((folder / "assets.tar").read_bytes()).hexdigest()
    capsys.readouterr()

    assert main(versioned("publish", tmp_path / "producer")) == 2

    assert (f"error: {folder / 'assets.tar'}: sha256 {repacked} differs from the catalog's pin "
            f"components.assets.sha256.{V1} ({pinned}); nothing was published") in capsys.readouterr().err
    assert catalog_for.keys() == []


def test_an_exclude_with_a_slash_matches_the_path_below_the_packed_folder(catalog_for: S3Bucket,
                                                                          tmp_path: Path) -> None:
    folder = produce(tmp_path, V1)

    assert main(versioned("pack", tmp_path, "--exclude", "obj001/*.jpg")) == 0

    with tarfile.open(folder / "assets.tar") as tar:
        names = tar.getnames()
    assert "assets/obj001/albedo.jpg" not in names
    assert {"assets/obj000/albedo.jpg", "assets/obj002/albedo.jpg", "assets/obj001/obj001.glb"} <= set(names)


def test_pack_without_an_assets_folder_exits_2_naming_it_and_creates_nothing(
        catalog_for: S3Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(versioned("pack", tmp_path / "producer")) == 2

    assert f"error: {tmp_path / 'producer' / DS / V1 / 'assets'}: folder to pack does not exist" in \
        capsys.readouterr().err
    assert not (tmp_path / "producer").exists()


class _Trickle(BaseHTTPRequestHandler):
    """Announces 10 MiB and sends 1 KiB every 10 ms: a download that is still running when interrupted."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10 << 20))
        self.end_headers()
        try:
            for _ in range(10 << 10):
                self.wfile.write(bytes(1024))
                time.sleep(0.01)
        except OSError:  # the client went away
            return

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def trickle_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_ctrl_c_during_a_download_exits_130_without_a_traceback_keeping_the_bytes_held(
        trickle_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_catalog(tmp_path, {DS: versioned_body(trickle_url, annotations={}, assets={})})
    monkeypatch.setenv(CATALOG_ENV, str(tmp_path / "catalog.yaml"))
    folder = tmp_path / "cache" / DS / V1

    ended = interrupt_cli(versioned("download", tmp_path / "cache", "--component", "assets"),
                          [(lambda: any(path.stat().st_size for path in folder.glob("*.part")), "bytes held")])

    assert ended.returncode == 130, ended.stderr
    assert "Traceback" not in ended.stderr and "interrupted: run the same command again to resume" in ended.stderr
    assert any(path.stat().st_size for path in folder.glob("*.part"))
    assert not (folder / "assets.tar").exists()
