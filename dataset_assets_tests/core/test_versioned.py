"""Date-versioned datasets: annotations merge, reproducible packing with excludes, safe extraction."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from dataset_assets.core.errors import DatasetAssetsError, InvalidInputError, UnsafeArchiveError
from dataset_assets.core.versioned import (
    DEFAULT_EXCLUDES,
    AnnotationError,
    check_version,
    extract_tar_safely,
    load_annotations,
    pack_assets,
    prepare_annotations,
)


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


def test_archive_over_size_limit_is_rejected(tmp_path: Path) -> None:
    archive = crafted_tar(tmp_path / "big.tar", _member("assets/big.bin", size=1000), b"y" * 1000)
    with pytest.raises(UnsafeArchiveError, match="limit"):
        extract_tar_safely(archive, tmp_path / "out", max_bytes=500)
    assert not (tmp_path / "out").exists()


def test_gzip_bomb_style_compressed_tar_is_bounded(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = _member("assets/zeros.bin", size=10 << 20)
        tar.addfile(info, io.BytesIO(bytes(10 << 20)))
    assert archive.stat().st_size < 100_000
    with pytest.raises(UnsafeArchiveError, match="limit"):
        extract_tar_safely(archive, tmp_path / "out", max_bytes=1 << 20)


def test_pack_of_empty_tree_fails_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DatasetAssetsError, match="nothing to pack"):
        pack_assets(tmp_path / "assets", tmp_path / "assets.tar")
    assert not (tmp_path / "assets.tar").exists()
