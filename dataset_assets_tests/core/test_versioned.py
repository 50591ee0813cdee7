"""Date-versioned datasets: catalog kind, annotations merge, reproducible packing with excludes,
safe extraction, and downloads of versions from a loopback provider."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from dataset_assets.core.catalog import Catalog
from dataset_assets.core.errors import CatalogError, DatasetAssetsError, InvalidInputError, UnsafeArchiveError
from dataset_assets.core.transfer import ChecksumMismatch, TransferSettings
from dataset_assets.core.versioned import (
    DEFAULT_EXCLUDES,
    DEFAULT_MAX_EXTRACT_BYTES,
    DEFAULT_MAX_EXTRACT_MEMBERS,
    AnnotationError,
    AssetsMismatchError,
    ExtractLimits,
    PublishSpec,
    UnreadableArchiveError,
    check_annotations_match_assets,
    check_version,
    download_components,
    extract_tar_safely,
    load_annotations,
    pack_assets,
    prepare_annotations,
)
from dataset_assets_tests.core.handlers.helpers import write_catalog
from dataset_assets_tests.static_server import StaticServer
from dataset_assets_tests.tar_fixtures import header_with_size_field

DS = "objects"
V1, V2 = "2023_07_28", "2023_09_23"
FAST = TransferSettings(workers=4, max_attempts=1)


def make_assets(root: Path, objects: int = 3) -> Path:
    assets = root / "assets"
    for index in range(objects):
        uid = f"obj{index:03d}"
        folder = assets / uid
        folder.mkdir(parents=True)
        (folder / f"{uid}.glb").write_bytes(os.urandom(64) + bytes([index]))
        (folder / "albedo.jpg").write_bytes(b"jpg" * (index + 1))
        (folder / "annotations.json").write_text(json.dumps({"uid": uid, "category": "chair", "scale": 1.5}))
        (folder / "thor_metadata.json").write_text("{}")
    (assets / ".DS_Store").write_bytes(b"junk")
    (assets / "obj000" / "._albedo.jpg").write_bytes(b"junk")
    (assets / "build.lock").write_text("")
    return root


@pytest.mark.parametrize("value", ["2023_07_28", "2024_02_29"])
def test_valid_date_versions_pass(value: str) -> None:
    assert check_version(value, "catalog.yaml", "versions[0]") == value


@pytest.mark.parametrize("value", ["2023-07-28", "2023_13_01", "2023_02_30", "latest", 20230728, "../2023_07_28"])
def test_bad_versions_name_source_field_and_value(value: object) -> None:
    with pytest.raises(InvalidInputError, match=r"catalog.yaml: field 'versions\[0\]'") as caught:
        check_version(value, "catalog.yaml", "versions[0]")
    assert repr(value) in str(caught.value)


def test_prepare_annotations_merges_sorted_with_zero_mtime(tmp_path: Path) -> None:
    root = make_assets(tmp_path)
    path = prepare_annotations(root)
    raw = path.read_bytes()
    assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime
    merged = load_annotations(path)
    assert list(merged) == ["obj000", "obj001", "obj002"]
    assert merged["obj001"]["category"] == "chair"
    assert prepare_annotations(root).read_bytes() == raw


def test_os_junk_folders_pack_leaves_out_are_not_taken_for_objects_to_annotate(tmp_path: Path) -> None:
    """A tree copied from macOS carries `.Trashes` and `.fseventsd` folders; pack excludes them, and so
    must the merge of per-object annotations, or such a tree cannot be prepared at all."""
    root = make_assets(tmp_path)
    for junk in (".Trashes", ".fseventsd"):
        (root / "assets" / junk).mkdir()
        (root / "assets" / junk / "fseventsd-uuid").write_bytes(b"junk")

    merged = load_annotations(prepare_annotations(root))
    packed = pack_assets(root / "assets", tmp_path / "assets.tar")

    assert list(merged) == ["obj000", "obj001", "obj002"]
    assert not any("/." in member.name for member in packed.members)


@pytest.mark.parametrize(
    ("content", "field"),
    [({"uid": "obj001", "category": ""}, "category"), ({"uid": "other", "category": "x"}, "uid"),
     ({"uid": "obj001", "category": "x", "scale": -1}, "scale"), (["not", "an", "object"], "<root>")],
)
def test_malformed_object_annotation_names_file_and_field(tmp_path: Path, content: object, field: str) -> None:
    root = make_assets(tmp_path)
    bad = root / "assets" / "obj001" / "annotations.json"
    bad.write_text(json.dumps(content))
    with pytest.raises(AnnotationError, match=rf"{bad}: field '{field}'"):
        prepare_annotations(root)
    assert not (root / "annotations.json.gz").exists()


def test_an_object_annotation_that_is_not_utf8_names_file_and_byte(tmp_path: Path) -> None:
    root = make_assets(tmp_path)
    bad = root / "assets" / "obj001" / "annotations.json"
    bad.write_bytes(b'{"uid": "obj001", "category": "chair \xe9"}')  # Latin-1, as an old tool might write it

    with pytest.raises(AnnotationError, match=rf"{bad}: field '<root>' is not UTF-8 text .*\(got 'byte 37'\)"):
        prepare_annotations(root)
    assert not (root / "annotations.json.gz").exists()


def test_pack_is_reproducible_and_excludes_junk(tmp_path: Path) -> None:
    root = make_assets(tmp_path)
    first = pack_assets(root / "assets", tmp_path / "a" / "assets.tar")
    os.utime(root / "assets" / "obj000" / "albedo.jpg", (1, 1))
    second = pack_assets(root / "assets", tmp_path / "b" / "assets.tar")
    assert first.tar_path.read_bytes() == second.tar_path.read_bytes()
    with tarfile.open(first.tar_path) as tar:
        names = tar.getnames()
        assert all(member.mtime == 0 and member.uid == 0 for member in tar.getmembers())
    assert "assets/obj000/obj000.glb" in names
    for junk in ("thor_metadata.json", ".DS_Store", "._albedo.jpg", "build.lock"):
        assert not any(name.endswith(junk) for name in names), junk
    manifest = json.loads(first.manifest_path.read_text())
    assert manifest["sha256"] == hashlib.sha256(first.tar_path.read_bytes()).hexdigest()
    assert manifest["excludes"] == list(DEFAULT_EXCLUDES)
    member = next(m for m in manifest["members"] if m["name"] == "assets/obj001/albedo.jpg")
    assert member["sha256"] == hashlib.sha256(b"jpgjpg").hexdigest()


def test_pack_then_extract_gives_identical_tree(tmp_path: Path) -> None:
    root = make_assets(tmp_path)
    packed = pack_assets(root / "assets", tmp_path / "assets.tar")
    names = extract_tar_safely(packed.tar_path, tmp_path / "out")
    assert names == [member.name for member in packed.members]
    for member in packed.members:
        original = root / member.name
        assert (tmp_path / "out" / member.name).read_bytes() == original.read_bytes()


def crafted_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("assets/ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [(_member("../x"), "escape"), (_member("/abs"), "absolute"),
     (_member("assets/link", tarfile.SYMTYPE, link="/etc/passwd"), "symlink"),
     (_member("assets/dev", tarfile.CHRTYPE), "device"), (_member("../d/", tarfile.DIRTYPE), "escape")],
)
def test_crafted_tar_is_rejected_and_nothing_extracted(
    tmp_path: Path, member: tarfile.TarInfo, reason: str
) -> None:
    archive = crafted_tar(tmp_path / "bad.tar", member, b"x" if member.isreg() else b"")
    with pytest.raises(UnsafeArchiveError, match=reason):
        extract_tar_safely(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "x").exists()


def test_a_member_that_cannot_be_written_names_the_archive_and_member_and_leaves_nothing(tmp_path: Path) -> None:
    """`assets/ok.txt` is a file, so `assets/ok.txt/inner` cannot be created below it."""
    archive = crafted_tar(tmp_path / "clash.tar", _member("assets/ok.txt/inner"), b"x")

    for strip_root in (False, True):
        with pytest.raises(DatasetAssetsError,
                           match=rf"{archive}: cannot extract member 'assets/ok\.txt/inner' \(Not a directory\)"):
            extract_tar_safely(archive, tmp_path / "out", strip_root=strip_root)
        assert not (tmp_path / "out").exists()


def test_a_member_of_negative_size_is_rejected_before_it_can_offset_the_size_limit(tmp_path: Path) -> None:
    archive = tmp_path / "negative.tar"
    big = tarfile.TarInfo("assets/big.bin")
    big.size = 1000
    archive.write_bytes(header_with_size_field("assets/neg.bin", b"-0000001750\0") + big.tobuf(tarfile.USTAR_FORMAT)
                        + b"y" * 1024 + b"\0" * 1024)  # -1000 then +1000: a sum of 0 under any limit

    with pytest.raises(UnsafeArchiveError, match="negative size"):
        extract_tar_safely(archive, tmp_path / "out", max_bytes=500)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "not a tar"])
def test_an_unreadable_tarball_is_named_and_leaves_the_old_folder(tmp_path: Path, damage: str) -> None:
    root = make_assets(tmp_path)
    packed = pack_assets(root / "assets", tmp_path / "assets.tar")
    extract_tar_safely(packed.tar_path, tmp_path / "out")
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    data = packed.tar_path.read_bytes()
    packed.tar_path.write_bytes(data[:len(data) // 2 + 100] if damage == "truncated" else b"<html>503</html>" * 100)

    with pytest.raises(DatasetAssetsError, match=rf"{re.escape(str(packed.tar_path))}: not a readable tar archive"):
        extract_tar_safely(packed.tar_path, tmp_path / "out")

    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before


def test_archive_over_size_limit_is_rejected(tmp_path: Path) -> None:
    archive = crafted_tar(tmp_path / "big.tar", _member("assets/big.bin", size=1000), b"y" * 1000)
    with pytest.raises(UnsafeArchiveError, match="limit"):
        extract_tar_safely(archive, tmp_path / "out", max_bytes=500)
    assert not (tmp_path / "out").exists()


def test_a_tarball_over_the_default_size_limit_is_refused_naming_the_setting_that_raises_it(tmp_path: Path) -> None:
    """Only the header is written: the limit refuses the member before a byte of its data is read, and with
    the limit raised, reading goes on (and finds the data missing) instead."""
    big = tarfile.TarInfo("assets/huge.bin")
    big.size = DEFAULT_MAX_EXTRACT_BYTES + 1
    archive = tmp_path / "huge.tar"
    archive.write_bytes(big.tobuf(tarfile.PAX_FORMAT) + bytes(1024))

    with pytest.raises(UnsafeArchiveError, match=re.escape(
            f"member 'assets/huge.bin' rejected: archive expands past the {DEFAULT_MAX_EXTRACT_BYTES}-byte limit "
            "(raise extract.max_bytes in the catalog, or --max-extract-bytes, for a larger archive)")):
        extract_tar_safely(archive, tmp_path / "out")
    with pytest.raises(UnreadableArchiveError):
        extract_tar_safely(archive, tmp_path / "out", max_bytes=DEFAULT_MAX_EXTRACT_BYTES + 1)
    assert not (tmp_path / "out").exists()


def test_gzip_bomb_style_compressed_tar_is_bounded(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = _member("assets/zeros.bin", size=10 << 20)
        tar.addfile(info, io.BytesIO(bytes(10 << 20)))
    assert archive.stat().st_size < 100_000
    with pytest.raises(UnsafeArchiveError, match="limit"):
        extract_tar_safely(archive, tmp_path / "out", max_bytes=1 << 20)


@pytest.mark.parametrize("name", ["d:x/annotations.json", "obj000/..\\mesh.glb", "\\obj/mesh.glb"])
def test_pack_refuses_a_file_the_download_would_refuse_to_extract_and_writes_nothing(
        tmp_path: Path, name: str) -> None:
    """A name like `d:x` reads as a drive letter to the safe extractor: packed, the version could not be
    downloaded by anyone, so packing fails naming the file instead."""
    crafted = crafted_tar(tmp_path / "crafted.tar", _member(f"assets/{name}"), b"x")
    with pytest.raises(UnsafeArchiveError):
        extract_tar_safely(crafted, tmp_path / "out", strip_root=True)
    root = make_assets(tmp_path)
    (root / "assets" / name).parent.mkdir(parents=True, exist_ok=True)
    (root / "assets" / name).write_text("{}")

    with pytest.raises(UnsafeArchiveError, match=re.escape(f"{root / 'assets'}: member {name!r} rejected")):
        pack_assets(root / "assets", tmp_path / "assets.tar")

    assert not (tmp_path / "assets.tar").exists()
    assert not list(tmp_path.glob(".assets.tar.*"))


def test_pack_of_empty_tree_fails_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DatasetAssetsError, match="nothing to pack"):
        pack_assets(tmp_path / "assets", tmp_path / "assets.tar")
    assert not (tmp_path / "assets.tar").exists()


def _make_special(path: Path, kind: str) -> None:
    """A FIFO, a device node (a copy of /dev/null's; the test is skipped where mknod is not allowed), or a
    socket bound from inside its folder (a socket path is limited to about 100 bytes)."""
    if kind == "fifo":
        os.mkfifo(path)
        return
    if kind in ("chardev", "blockdev"):
        try:
            os.mknod(path, (stat.S_IFCHR if kind == "chardev" else stat.S_IFBLK) | 0o600, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("this user may not make device nodes")
        return
    cwd = Path.cwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path.name)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize(("kind", "described"), [
    ("fifo", "FIFO"), ("socket", "socket"), ("chardev", "character device"), ("blockdev", "block device")])
def test_pack_refuses_a_fifo_socket_or_device_naming_it_and_writes_nothing(
        tmp_path: Path, kind: str, described: str) -> None:
    """The extractor accepts regular files only: a special file cannot travel in the tarball, and leaving it
    out without a word would publish a version that lacks it."""
    root = make_assets(tmp_path)
    _make_special(root / "assets" / "obj001" / "feed", kind)

    with pytest.raises(UnsafeArchiveError,
                       match=re.escape(f"{root / 'assets'}: member 'obj001/feed' rejected: is a {described}")):
        pack_assets(root / "assets", tmp_path / "assets.tar")

    assert not (tmp_path / "assets.tar").exists()
    assert not list(tmp_path.glob(".assets.tar.*"))


def test_pack_warns_about_folders_it_leaves_out_because_nothing_below_them_is_packed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The extractor recreates no directory members, so an empty folder cannot round-trip: pack names it."""
    root = make_assets(tmp_path)
    (root / "assets" / "obj001" / "empty" / "deeper").mkdir(parents=True)
    (root / "assets" / "obj002" / "junk_only").mkdir()
    (root / "assets" / "obj002" / "junk_only" / ".DS_Store").write_bytes(b"junk")

    with caplog.at_level(logging.WARNING, logger="dataset_assets.core.versioned"):
        packed = pack_assets(root / "assets", tmp_path / "assets.tar")

    expected = ("obj001/empty", "obj001/empty/deeper", "obj002/junk_only")
    assert packed.empty_folders == expected
    assert [record.getMessage() for record in caplog.records] == [
        f"{root / 'assets'}: 3 folder(s) with no file to pack are left out of {tmp_path / 'assets.tar'} "
        f"(extracting recreates only folders that hold files): {', '.join(expected)}"]
    with tarfile.open(packed.tar_path) as tar:
        assert all(member.isreg() for member in tar.getmembers())
    extract_tar_safely(packed.tar_path, tmp_path / "out", strip_root=True)
    assert tree(tmp_path / "out") == packed_tree(root / "assets")
    assert not (tmp_path / "out" / "obj001" / "empty").exists()


def test_pack_of_a_tree_without_empty_folders_warns_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_assets(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dataset_assets.core.versioned"):
        packed = pack_assets(root / "assets", tmp_path / "assets.tar")
    assert packed.empty_folders == ()
    assert caplog.records == []


def tree(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def packed_tree(folder: Path) -> dict[str, bytes]:
    """The files of `folder` that packing keeps: those no default exclude matches."""
    return {name: data for name, data in tree(folder).items()
            if not any(part.startswith(".") or part.endswith(".lock") or part == "thor_metadata.json"
                       for part in name.split("/"))}


def make_version(folder: Path) -> Path:
    """A producer's version folder: assets/ and features/ (with junk), prepared and packed."""
    make_assets(folder)
    (folder / "features").mkdir()
    (folder / "features" / "clip_features.npy").write_bytes(os.urandom(256))
    (folder / "features" / ".DS_Store").write_bytes(b"junk")
    prepare_annotations(folder)
    pack_assets(folder / "assets", folder / "assets.tar")
    pack_assets(folder / "features", folder / "features.tar", root="features")
    return folder


def serve_version(served: Path, producer: Path, version: str) -> Path:
    """Publish a fresh version the seed's way: `<version>/{annotations.json.gz,assets.tar,features.tar}` and
    `holodeck/<version>.tar`, below the folder a loopback server serves. Returns the producer's version folder."""
    folder = make_version(producer / version)
    (served / version).mkdir(parents=True)
    for name in ("annotations.json.gz", "assets.tar", "features.tar"):
        shutil.copy(folder / name, served / version / name)
    base = producer / "base" / version
    base.mkdir(parents=True)
    (base / "objaverse_holodeck.json").write_text(json.dumps({"version": version}))
    pack_assets(base, served / "holodeck" / f"{version}.tar", root=version)
    return folder


def versioned_body(base_url: str, versions: list[str] | str | None = None, publish: dict | None = None,
                   **components: dict) -> dict[str, Any]:
    """The catalog YAML body of a versioned dataset (every component, both versions, unless given)."""
    body: dict[str, Any] = {"kind": "versioned", "base_url": base_url, "versions": versions or [V1, V2],
                            "components": components or {"annotations": {}, "assets": {}, "features": {},
                                                         "base_data": {}}}
    if publish is not None:
        body["publish"] = publish
    return body


def test_versioned_catalog_defaults_follow_the_seed_layout(tmp_path: Path) -> None:
    catalog: Catalog = write_catalog(tmp_path, {DS: versioned_body("http://127.0.0.1:1/objathor/")})
    source = catalog.dataset(DS).versioned
    assert source is not None and source.versions == (V1, V2) and not source.dynamic
    assert {name: component.url(source.base_url, V1) for name, component in source.components.items()} == {
        "annotations": f"http://127.0.0.1:1/objathor/{V1}/annotations.json.gz",
        "assets": f"http://127.0.0.1:1/objathor/{V1}/assets.tar",
        "features": f"http://127.0.0.1:1/objathor/{V1}/features.tar",
        "base_data": f"http://127.0.0.1:1/objathor/holodeck/{V1}.tar",
    }
    assert source.published_files() == ["assets.tar", "features.tar", "annotations.json.gz"]


def test_extract_limits_default_to_the_built_in_caps_and_are_read_from_the_catalog(tmp_path: Path) -> None:
    default = write_catalog(tmp_path, {DS: versioned_body("http://127.0.0.1:1/")}).dataset(DS).versioned
    assert default is not None
    assert default.extract == ExtractLimits(DEFAULT_MAX_EXTRACT_BYTES, DEFAULT_MAX_EXTRACT_MEMBERS)
    body = {**versioned_body("http://127.0.0.1:1/"), "extract": {"max_bytes": 1 << 40, "max_members": 20_000_000}}
    raised = write_catalog(tmp_path, {DS: body}).dataset(DS).versioned
    assert raised is not None and raised.extract == ExtractLimits(1 << 40, 20_000_000)


@pytest.mark.parametrize(("limits", "field", "value"),
                         [({"max_bytes": 0}, "max_bytes", "0"), ({"max_members": -5}, "max_members", "-5")])
def test_extract_limits_below_one_name_the_field_and_value(limits: dict[str, int], field: str, value: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(f"extract limits: field '{field}' must be an integer of "
                                                          f"at least 1 (got {value})")):
        ExtractLimits(**limits)


def test_publish_settings_take_the_endpoint_from_the_environment(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    publish = {"bucket": "assets", "prefix": "/public/", "part_size_mib": 50, "concurrency": 300,
               "endpoint_url": "${OBJECTS_S3_ENDPOINT:-}"}
    monkeypatch.setenv("OBJECTS_S3_ENDPOINT", "http://127.0.0.1:9000")
    source = write_catalog(tmp_path, {DS: versioned_body("http://x", "dynamic", publish)}).dataset(DS).versioned
    assert source is not None and source.dynamic
    assert source.publish == PublishSpec("assets", "public", 50, 300, "http://127.0.0.1:9000")
    monkeypatch.delenv("OBJECTS_S3_ENDPOINT")
    source = write_catalog(tmp_path, {DS: versioned_body("http://x", "dynamic", publish)}).dataset(DS).versioned
    assert source is not None and source.publish is not None and source.publish.endpoint_url is None


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [({"versions": [20230728]}, "versions[0]", "quoted string"),
     ({"versions": ["2023_02_30"]}, "versions[0]", "not a real date"),
     ({"versions": [V1, V1]}, "versions", "twice"),
     ({"versions": "dynamic"}, "versions", "needs a 'publish' section"),
     ({"components": {"annotations": {}}}, "components.assets", "is required"),
     ({"components": {"annotations": {}, "assets": {}, "meshes": {}}}, "components.meshes", "not a known field"),
     ({"components": {"annotations": {}, "assets": {"path": "assets.tar"}}}, "components.assets.path", "{version}"),
     ({"components": {"annotations": {}, "assets": {"path": "../{version}.tar"}}}, "components.assets.path",
      "relative path"),
     ({"components": {"annotations": {}, "assets": {"sha256": {"2024_01_01": "0" * 64}}}},
      "components.assets.sha256.2024_01_01", "not a listed version"),
     ({"components": {"annotations": {}, "assets": {"sha256": {V1: "abc"}}}}, f"components.assets.sha256.{V1}",
      "64 lowercase hex"),
     ({"publish": {"bucket": "b", "part_size_mib": 4}}, "publish.part_size_mib", "at least 5"),
     ({"publish": {"bucket": "b", "part_size_mib": 5121}}, "publish.part_size_mib", "at most 5120"),
     ({"publish": {"prefix": "p"}}, "publish.bucket", "non-empty string"),
     ({"extract": {"max_bytes": 0}}, "extract.max_bytes", "integer of at least 1"),
     ({"extract": {"max_members": "5M"}}, "extract.max_members", "integer of at least 1"),
     ({"extract": {"max_members": True}}, "extract.max_members", "integer of at least 1"),
     ({"extract": {"max_size": 10}}, "extract.max_size", "not a known field"),
     ({"extract": [1 << 40]}, "extract", "must be a mapping"),
     ({"base_url": "ftp://example.com"}, "base_url", "http(s) URL")],
)
def test_bad_versioned_catalog_values_name_file_field_and_value(tmp_path: Path, change: dict, field: str,
                                                                problem: str) -> None:
    body = {**versioned_body("http://127.0.0.1:1/objathor"), **change}
    with pytest.raises(CatalogError) as raised:
        write_catalog(tmp_path, {DS: body})
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'catalog.yaml'}: field 'datasets.{DS}.{field}'"), message
    assert problem in message and "(got " in message


@pytest.mark.parametrize(("data", "field"), [(b"not gzip", "<root>"), (gzip.compress(b"[1, 2]"), "<root>"),
                                             (gzip.compress(b'{"obj000": 3}'), "obj000")])
def test_malformed_merged_annotations_name_file_and_field(tmp_path: Path, data: bytes, field: str) -> None:
    path = tmp_path / "annotations.json.gz"
    path.write_bytes(data)
    with pytest.raises(AnnotationError, match=rf"{path}: field '{field}'"):
        load_annotations(path)


def test_merged_annotations_with_a_corrupt_deflate_stream_name_the_file(tmp_path: Path) -> None:
    """A gzip header followed by damaged compressed data: zlib, not gzip, raises, and must be named too."""
    damaged = bytearray(gzip.compress(b'{"obj000": {"category": "chair"}}' * 100, mtime=0))
    damaged[10] ^= 0xFF  # the first byte of the deflate stream: an invalid block type
    path = tmp_path / "annotations.json.gz"
    path.write_bytes(bytes(damaged))

    with pytest.raises(AnnotationError, match=rf"{path}: field '<root>' is not gzip-compressed JSON"):
        load_annotations(path)


def test_annotations_expanding_past_the_limit_are_refused_before_they_are_parsed(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json.gz"
    path.write_bytes(gzip.compress(b'{"obj000": {"pad": "' + b" " * (8 << 20) + b'"}}'))  # 8 MiB from 8 KiB
    assert path.stat().st_size < 64 << 10

    with pytest.raises(AnnotationError, match=rf"{path}: field '<root>'.*past the {4 << 20}-byte limit"):
        load_annotations(path, max_bytes=4 << 20)
    assert list(load_annotations(path, max_bytes=16 << 20)) == ["obj000"]


def test_strip_root_makes_the_single_top_folder_the_destination(tmp_path: Path) -> None:
    root = make_assets(tmp_path / "producer")
    packed = pack_assets(root / "assets", tmp_path / "assets.tar")
    names = extract_tar_safely(packed.tar_path, tmp_path / "out", strip_root=True)
    assert names == [member.name.removeprefix("assets/") for member in packed.members]
    assert tree(tmp_path / "out") == packed_tree(root / "assets")


def test_a_tarball_made_with_tar_dash_c_dot_slash_assets_lands_in_assets_not_assets_assets(
        static_server: StaticServer, tmp_path: Path) -> None:
    """`tar -C <version> -cf assets.tar ./assets` names members `./assets/...`: `.` is no folder of its own."""
    producer = make_assets(tmp_path / "producer")
    (static_server.folder / V1).mkdir()
    with tarfile.open(static_server.folder / V1 / "assets.tar", "w") as tar:
        tar.add(producer / "assets", arcname="./assets")
    source = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url)}).dataset(DS).versioned
    assert source is not None

    [result] = download_components(DS, source, V1, tmp_path / "cache", ["assets"], FAST)

    assert result.folder == tmp_path / "cache" / DS / V1 / "assets"
    assert tree(result.folder) == tree(producer / "assets")
    assert result.members == len(tree(producer / "assets"))


@pytest.mark.parametrize("name", ["other/x.txt", "top.txt", "./top.txt", ".//x.txt"])
def test_strip_root_rejects_a_second_top_folder_or_a_top_level_file(tmp_path: Path, name: str) -> None:
    archive = crafted_tar(tmp_path / "two.tar", _member(name), b"x")
    with pytest.raises(UnsafeArchiveError, match="exactly one folder"):
        extract_tar_safely(archive, tmp_path / "out", strip_root=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["assets/C:evil.txt", "assets//evil.txt", "assets/\\evil.txt"])
def test_strip_root_checks_the_name_left_below_the_top_folder(tmp_path: Path, name: str) -> None:
    """`assets/C:evil.txt` is a safe name, but stripped of `assets/` it is drive-relative: `dest` joined
    with it leaves `dest` on Windows; `assets//x` and `assets/\\x` become absolute names."""
    archive = crafted_tar(tmp_path / "stripped.tar", _member(name), b"x")
    with pytest.raises(UnsafeArchiveError, match="absolute paths are not allowed"):
        extract_tar_safely(archive, tmp_path / "out", strip_root=True)
    assert not (tmp_path / "out").exists()


def test_versions_download_into_their_own_folders_laid_out_like_the_seed(
        static_server: StaticServer, tmp_path: Path) -> None:
    produced = {version: serve_version(static_server.folder, tmp_path / "producer", version) for version in (V1, V2)}
    source = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url)}).dataset(DS).versioned
    assert source is not None
    root = tmp_path / "cache"
    for version in (V1, V2):
        results = download_components(DS, source, version, root, list(source.components), FAST)
        assert {result.name: result.status for result in results} == dict.fromkeys(
            ("annotations", "assets", "features", "base_data"), "downloaded")
        assert results[0].name == "annotations" and results[0].objects == 3
    for version, producer in produced.items():
        folder = root / DS / version
        assert (folder / "annotations.json.gz").read_bytes() == (producer / "annotations.json.gz").read_bytes()
        assert tree(folder / "assets") == packed_tree(producer / "assets")
        assert tree(folder / "features") == {"clip_features.npy": (producer / "features" / "clip_features.npy"
                                                                   ).read_bytes()}
        assert json.loads((folder / "holodeck" / "objaverse_holodeck.json").read_text()) == {"version": version}
    assert tree(root / DS / V1 / "assets") != tree(root / DS / V2 / "assets")


def test_a_base_url_with_a_query_token_gets_the_component_path_before_the_query(
        static_server: StaticServer, tmp_path: Path) -> None:
    """Like an Azure container SAS URL: `<container>?sv=..&sig=..` signs every blob below it."""
    producer = serve_version(static_server.folder, tmp_path / "producer", V1)
    base_url = f"{static_server.base_url}/?sv=2024&sig=s3cr3t"
    source = write_catalog(tmp_path, {DS: versioned_body(base_url, annotations={}, assets={})}).dataset(DS).versioned
    assert source is not None

    results = download_components(DS, source, V1, tmp_path / "cache", ["annotations", "assets"], FAST)

    assert sorted(static_server.requests) == [f"/{V1}/annotations.json.gz?sv=2024&sig=s3cr3t",
                                              f"/{V1}/assets.tar?sv=2024&sig=s3cr3t"]
    assert results[0].path.read_bytes() == (producer / "annotations.json.gz").read_bytes()
    assert results[1].folder is not None and tree(results[1].folder) == packed_tree(producer / "assets")


MEMBERS_HINT = "(raise extract.max_members in the catalog, or --max-extract-members, for a larger archive)"


@pytest.mark.parametrize(("limit", "value", "problem"),
                         [("max_members", 3, f"more than 3 members {MEMBERS_HINT}"),
                          ("max_bytes", 100, "archive expands past the 100-byte limit (raise extract.max_bytes")])
def test_an_assets_tar_over_the_catalogs_extract_limit_is_refused_and_extracted_once_the_limit_is_raised(
        static_server: StaticServer, tmp_path: Path, limit: str, value: int, problem: str) -> None:
    producer = serve_version(static_server.folder, tmp_path / "producer", V1)
    body = versioned_body(static_server.base_url, annotations={}, assets={})
    strict = write_catalog(tmp_path, {DS: {**body, "extract": {limit: value}}}).dataset(DS).versioned
    assert strict is not None
    root = tmp_path / "cache"

    with pytest.raises(UnsafeArchiveError, match=re.escape(problem)):
        download_components(DS, strict, V1, root, ["assets"], FAST)
    assert not (root / DS / V1 / "assets").exists()

    raised = write_catalog(tmp_path, {DS: {**body, "extract": {limit: value * 1000}}}).dataset(DS).versioned
    assert raised is not None
    [result] = download_components(DS, raised, V1, root, ["assets"], FAST)
    assert result.status == "skipped" and result.members == len(packed_tree(producer / "assets"))
    assert tree(root / DS / V1 / "assets") == packed_tree(producer / "assets")


def test_a_second_download_fetches_nothing_and_keeps_the_extracted_tree(static_server: StaticServer,
                                                                        tmp_path: Path) -> None:
    serve_version(static_server.folder, tmp_path / "producer", V1)
    source = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url)}).dataset(DS).versioned
    assert source is not None
    root = tmp_path / "cache"
    download_components(DS, source, V1, root, ["annotations", "assets"], FAST)
    fetched, extracted = len(static_server.requests), (root / DS / V1 / "assets").stat().st_ino
    results = download_components(DS, source, V1, root, ["annotations", "assets"], FAST)
    assert [result.status for result in results] == ["skipped", "skipped"]
    assert len(static_server.requests) == fetched
    assert (root / DS / V1 / "assets").stat().st_ino == extracted


@pytest.mark.parametrize("damage", ["removed", "edited"])
def test_an_extracted_file_removed_or_edited_since_is_extracted_again(static_server: StaticServer, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      damage: str) -> None:
    producer = serve_version(static_server.folder, tmp_path / "producer", V1)
    source = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url)}).dataset(DS).versioned
    assert source is not None
    root = tmp_path / "cache"
    download_components(DS, source, V1, root, ["assets"], FAST)
    extracted = root / DS / V1 / "assets"
    victim = sorted(path for path in extracted.rglob("*") if path.is_file())[0]
    if damage == "removed":
        victim.unlink()
    else:
        victim.write_bytes(b"edited by hand")
    fetched = len(static_server.requests)
    with caplog.at_level(logging.WARNING, logger="dataset_assets.core.versioned"):
        [result] = download_components(DS, source, V1, root, ["assets"], FAST)
    assert result.status == "skipped" and len(static_server.requests) == fetched
    assert tree(extracted) == packed_tree(producer / "assets")
    assert f"{victim.relative_to(extracted)}" in caplog.text and "extracting again" in caplog.text


@pytest.mark.parametrize("marker", [b"\x00garbled", b"[]", b'{"sha256": "%s", "files": {"a": "b"}, "members": 1}'],
                         ids=["not json", "not an object", "malformed listing"])
def test_an_unreadable_extraction_marker_means_extracting_again(static_server: StaticServer, tmp_path: Path,
                                                                marker: bytes) -> None:
    producer = serve_version(static_server.folder, tmp_path / "producer", V1)
    source = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url)}).dataset(DS).versioned
    assert source is not None
    root = tmp_path / "cache"
    [first] = download_components(DS, source, V1, root, ["assets"], FAST)
    (root / DS / V1 / ".assets.extracted.json").write_bytes(marker.replace(b"%s", first.sha256.encode()))

    [result] = download_components(DS, source, V1, root, ["assets"], FAST)

    assert result.status == "skipped" and result.members == len(packed_tree(producer / "assets"))
    assert tree(root / DS / V1 / "assets") == packed_tree(producer / "assets")
    assert json.loads((root / DS / V1 / ".assets.extracted.json").read_text())["members"] == result.members


def test_a_pinned_sha256_mismatch_fails_naming_the_file_and_deletes_it(
        static_server: StaticServer, tmp_path: Path) -> None:
    serve_version(static_server.folder, tmp_path / "producer", V1)
    body = versioned_body(static_server.base_url, [V1], annotations={"sha256": {V1: "0" * 64}}, assets={})
    source = write_catalog(tmp_path, {DS: body}).dataset(DS).versioned
    assert source is not None
    target = tmp_path / "cache" / DS / V1 / "annotations.json.gz"
    with pytest.raises(ChecksumMismatch, match=rf"{target}: sha256 [0-9a-f]{{64}} differs from the catalog's pin "
                                               rf"components.annotations.sha256.{V1}"):
        download_components(DS, source, V1, tmp_path / "cache", ["annotations"], FAST)
    assert not target.exists()


def test_a_kept_file_that_no_longer_matches_its_pin_is_fetched_again(
        static_server: StaticServer, tmp_path: Path) -> None:
    producer = serve_version(static_server.folder, tmp_path / "producer", V1)
    pin = hashlib.sha256((producer / "annotations.json.gz").read_bytes()).hexdigest()
    body = versioned_body(static_server.base_url, [V1], annotations={"sha256": {V1: pin}}, assets={})
    source = write_catalog(tmp_path, {DS: body}).dataset(DS).versioned
    assert source is not None
    target = tmp_path / "cache" / DS / V1 / "annotations.json.gz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"stale")
    [result] = download_components(DS, source, V1, tmp_path / "cache", ["annotations"], FAST)
    assert result.status == "downloaded" and target.read_bytes() == (producer / "annotations.json.gz").read_bytes()


def test_a_download_into_the_folder_a_tarball_was_packed_from_leaves_that_tree_and_names_it(
        static_server: StaticServer, tmp_path: Path) -> None:
    """The producer's `assets/` holds files pack leaves out (thor_metadata.json, .DS_Store): swapping the
    extracted tarball in would delete them."""
    producer = serve_version(static_server.folder, tmp_path / "cache" / DS, V1)
    before = tree(producer / "assets")
    source = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url)}).dataset(DS).versioned
    assert source is not None

    with pytest.raises(DatasetAssetsError, match=rf"{re.escape(str(producer / 'assets'))}: exists but was not "
                                                 r"extracted from assets\.tar"):
        download_components(DS, source, V1, tmp_path / "cache", ["assets"], FAST)

    assert tree(producer / "assets") == before
    assert "obj000/thor_metadata.json" in before


def test_a_run_that_died_after_swapping_the_extracted_folder_in_is_extracted_again(
        static_server: StaticServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    producer = serve_version(static_server.folder, tmp_path / "producer", V1)
    source = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url)}).dataset(DS).versioned
    assert source is not None

    def die(*args: object) -> None:
        raise SystemExit("killed after the swap, before the record of what was extracted")

    with monkeypatch.context() as patch:
        patch.setattr("dataset_assets.core.versioned._listing", die)
        with pytest.raises(SystemExit):
            download_components(DS, source, V1, tmp_path / "cache", ["assets"], FAST)
    [result] = download_components(DS, source, V1, tmp_path / "cache", ["assets"], FAST)

    assert result.status == "skipped" and result.folder is not None
    assert tree(result.folder) == packed_tree(producer / "assets")


@pytest.mark.parametrize("name", ["annotations.json.gz", "assets.tar"])
def test_a_downloaded_file_that_cannot_be_read_is_deleted_so_the_next_run_fetches_it_again(
        static_server: StaticServer, tmp_path: Path, name: str) -> None:
    """A CDN answering 200 with an error page: kept, the page would fail every later run without a fetch."""
    producer = serve_version(static_server.folder, tmp_path / "producer", V1)
    (static_server.folder / V1 / name).write_bytes(b"<html><body>503 Service Unavailable</body></html>" * 20)
    source = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url)}).dataset(DS).versioned
    assert source is not None
    component = name.split(".")[0]
    target = tmp_path / "cache" / DS / V1 / name

    with pytest.raises(DatasetAssetsError, match=rf"(?s){re.escape(str(target))}: .*; the file was deleted"):
        download_components(DS, source, V1, tmp_path / "cache", [component], FAST)
    assert not target.exists()

    shutil.copy(producer / name, static_server.folder / V1 / name)
    [result] = download_components(DS, source, V1, tmp_path / "cache", [component], FAST)
    assert result.status == "downloaded" and target.read_bytes() == (producer / name).read_bytes()


def test_a_crafted_assets_tar_is_rejected_on_download_and_nothing_extracted(static_server: StaticServer,
                                                                            tmp_path: Path) -> None:
    serve_version(static_server.folder, tmp_path / "producer", V1)
    crafted_tar(static_server.folder / V1 / "assets.tar", _member("../escaped.txt"), b"x")
    source = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url, [V1])}).dataset(DS).versioned
    assert source is not None
    with pytest.raises(UnsafeArchiveError, match="escape"):
        download_components(DS, source, V1, tmp_path / "cache", ["assets"], FAST)
    assert not (tmp_path / "cache" / DS / V1 / "assets").exists()
    assert not (tmp_path / "cache" / DS / "escaped.txt").exists()


def test_a_version_outside_the_catalog_list_is_refused_before_any_request(static_server: StaticServer,
                                                                          tmp_path: Path) -> None:
    source = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url)}).dataset(DS).versioned
    assert source is not None
    for bad, problem in (("2024_01_01", "is not a version of this dataset"), ("../x", "must be a date version")):
        with pytest.raises(InvalidInputError, match=rf"field 'version' {problem}"):
            download_components(DS, source, bad, tmp_path / "cache", ["annotations"], FAST)
    assert static_server.requests == []


def test_annotations_nested_too_deeply_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json.gz"
    path.write_bytes(gzip.compress(b'{"obj000": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))

    with pytest.raises(AnnotationError, match=rf"{path}: field '<root>' is not gzip-compressed JSON \(nested"):
        load_annotations(path)


def test_annotations_must_describe_the_objects_the_packed_assets_hold(tmp_path: Path) -> None:
    folder = make_assets(tmp_path / V1)
    prepare_annotations(folder)
    shutil.rmtree(folder / "assets" / "obj002")
    for uid in ("obj003", "obj004"):
        (folder / "assets" / uid).mkdir()
        (folder / "assets" / uid / "annotations.json").write_text(json.dumps({"uid": uid, "category": "lamp"}))
    pack_assets(folder / "assets", folder / "assets.tar")

    with pytest.raises(AssetsMismatchError) as raised:
        check_annotations_match_assets(folder)
    message = str(raised.value)
    assert str(folder / "annotations.json.gz") in message and str(folder / "assets.tar.manifest.json") in message
    assert "only in annotations.json.gz: obj002" in message and "only in assets.tar: obj003, obj004" in message
    assert "run `prepare` again" in message

    prepare_annotations(folder)
    check_annotations_match_assets(folder)


def test_objects_pack_left_out_by_pattern_or_prepare_skips_are_no_mismatch(tmp_path: Path) -> None:
    folder = make_assets(tmp_path / V1)
    (folder / "assets" / ".Trashes").mkdir()
    (folder / "assets" / ".Trashes" / "old.glb").write_bytes(b"deleted")
    prepare_annotations(folder)
    for excludes in (["obj001"], ["obj001/*"], [*DEFAULT_EXCLUDES, "obj002"]):
        pack_assets(folder / "assets", folder / "assets.tar", excludes)
        check_annotations_match_assets(folder)
