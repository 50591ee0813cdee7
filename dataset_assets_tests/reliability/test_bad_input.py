"""Bad input: fuzzed catalogs and manifests, hostile tar members, decompression bombs, pickled payloads.

Inputs come from a deterministic generator (hypothesis is not installed): the packaged catalog
and a real demo manifest cut at every byte, every field replaced by each of `ODD_VALUES`, every
name replaced by each of `ODD_NAMES`. The oracle is the same for all of them: the input is either
accepted or refused with the project's error naming the file, the field and the value; never
another exception, and nothing written. Archives are run through every reader that opens them.
"""
from __future__ import annotations

import bz2
import copy
import gzip
import io
import json
import lzma
import pickle
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dataset_assets.cli import main as cli_main
from dataset_assets.core.catalog import PACKAGED_CATALOG, load_catalog
from dataset_assets.core.errors import CatalogError, InvalidInputError, ManifestError, UnsafeArchiveError
from dataset_assets.core.index import write_index
from dataset_assets.core.loading import IndexedShardDataset, ShardStream
from dataset_assets.core.manifest import load_manifest_file
from dataset_assets.core.preprocess import PreprocessConfig, preprocess_shards
from dataset_assets.core.shards import ShardWriter, iter_tar_samples, verify_shard_set
from dataset_assets.core.versioned import check_version, extract_tar_safely
from dataset_assets.demo.server import DemoServer

CATALOG_TEXT = PACKAGED_CATALOG.read_bytes()
ODD_VALUES: list[Any] = [None, True, 0, -1, 10**30, 1e308, float("nan"), "", "x" * 5_000, [], {}, [1, [2]],
                         {"nested": {"deep": None}}, "../../etc/passwd", "\u202egnp.exe", "名前"]
ODD_NAMES: list[str] = ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "seq\n", "seq_000\n", "seq\x00", " seq",
                        "-rf", ".hidden", "名前", "seq\u202e", "x" * 300, "seq 1", "seq;rm"]
TRUNCATION_STEP = 1
MANIFEST_TRUNCATION_STEP = 11  # a prime, so the cuts land on every kind of JSON token
ODD_VERSIONS = ["2023_07_28\n", "\uff12\uff10\uff12\uff13_07_28", "2023_02_30", "../2023_07_28", "2023-07-28", ""]
MAX_MESSAGE = 2_000


def leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path (keys / indexes) to a node of decoded YAML or JSON, parents before children."""
    if prefix:
        yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, child in items:
        yield from leaf_paths(child, (*prefix, name))


def replaced_at(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    changed = copy.deepcopy(document)
    node = changed
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return changed


def renamed_at(document: Any, path: tuple[Any, ...], name: str) -> Any:
    """`document` with the mapping key at `path` renamed to `name` (order kept)."""
    changed = copy.deepcopy(document)
    node = changed
    for step in path[:-1]:
        node = node[step]
    items = list(node.items())
    node.clear()
    node.update((name if key == path[-1] else key, value) for key, value in items)
    return changed


def dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(step) for step in path)


def assert_clear_refusal(error: BaseException, source: Path, field_prefix: str | None = None) -> None:
    """The project's error, naming the file and a field (under `field_prefix` if given), short enough to read."""
    message = str(error)
    assert isinstance(error, (CatalogError, ManifestError)), repr(error)
    assert message.startswith(f"{source}: field '"), message
    assert "(got " in message and len(message) < MAX_MESSAGE, message
    if field_prefix is not None:
        field = re.sub(r"\[(\d+)\]", r".\1", message[len(f"{source}: field '"):].split("'")[0])
        assert field.startswith(field_prefix) or field_prefix.startswith(field) or field == "<root>", (field, message)


def folder_listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


# Catalogs

CATALOG = yaml.safe_load(CATALOG_TEXT)
CATALOG_FIELDS = list(leaf_paths(CATALOG))
CATALOG_NAME_KEYS = [("datasets", "demo_aria"), ("datasets", "demo_aria", "preprocess", "cubercnn_small")]
CATALOG_TRUNCATIONS = range(0, len(CATALOG_TEXT), TRUNCATION_STEP)
CATALOG_CASES = len(CATALOG_TRUNCATIONS) + len(CATALOG_FIELDS) * len(ODD_VALUES) + len(CATALOG_NAME_KEYS) * len(
    ODD_NAMES)


def refusal(path: Path, data: bytes, load: Callable[[Path], object],
            refused_as: type[Exception]) -> Exception | None:
    """Write `data` to `path` and load it: the `refused_as` error `load` raised, or None if it loaded."""
    path.write_bytes(data)
    try:
        load(path)
    except refused_as as error:
        return error
    return None


def try_catalog(path: Path, data: bytes) -> Exception | None:
    return refusal(path, data, load_catalog, CatalogError)


def test_catalog_cut_at_every_byte_loads_or_fails_naming_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    refused = 0
    for cut in CATALOG_TRUNCATIONS:
        error = try_catalog(path, CATALOG_TEXT[:cut])
        if error is not None:
            assert_clear_refusal(error, path)
            refused += 1
    assert folder_listing(tmp_path) == ["catalog.yaml"]
    assert refused > len(CATALOG_TRUNCATIONS) // 2


def test_every_catalog_field_with_an_odd_value_loads_or_fails_naming_that_field(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    refused = 0
    for field in CATALOG_FIELDS:
        for value in ODD_VALUES:
            error = try_catalog(path, yaml.safe_dump(replaced_at(CATALOG, field, value)).encode())
            if error is not None:
                assert_clear_refusal(error, path, dotted(field))
                refused += 1
    assert folder_listing(tmp_path) == ["catalog.yaml"]
    assert refused > len(CATALOG_FIELDS) * len(ODD_VALUES) // 2


@pytest.mark.parametrize("name_key", CATALOG_NAME_KEYS, ids=dotted)
def test_odd_dataset_and_config_names_are_refused_naming_the_name(tmp_path: Path, name_key: tuple[str, ...]) -> None:
    path = tmp_path / "catalog.yaml"
    for name in ODD_NAMES:
        error = try_catalog(path, yaml.safe_dump(renamed_at(CATALOG, name_key, name)).encode())
        assert error is not None, f"name {name!r} was accepted"
        assert_clear_refusal(error, path, dotted((*name_key[:-1], name)))


@pytest.mark.parametrize("version", ODD_VERSIONS)
def test_odd_date_versions_are_refused_naming_source_field_and_value(version: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        check_version(version, "catalog.yaml", "datasets.objects.versions[0]")
    assert str(raised.value).startswith("catalog.yaml: field 'datasets.objects.versions[0]'")
    assert f"(got {version!r})" in str(raised.value)


# Manifests


@pytest.fixture
def manifest_document(demo_server: DemoServer) -> dict[str, Any]:
    """A real manifest as the demo server publishes it (signed links, sizes, sha1s)."""
    return httpx.get(demo_server.manifest_url).json()


def try_manifest(path: Path, data: bytes) -> Exception | None:
    return refusal(path, data, load_manifest_file, ManifestError)


MANIFEST_ODD_VALUE_FIELDS = 24  # fields of the manifest (from the top) each given every odd value
MANIFEST_NAME_KEYS = 3  # config and sequence names, and a file name, replaced by every odd name


def manifest_with_name(document: dict[str, Any], which: int, name: str) -> tuple[dict[str, Any], str]:
    """The manifest with its first config name, sequence name or file name replaced, and the field to blame."""
    root = "atek_data_for_all_configs"
    if which == 0:
        return renamed_at(document, (root, "cubercnn"), name), f"{root}.{name}"
    if which == 1:
        path = (root, "cubercnn", "wds_file_urls", "seq_000")
        return renamed_at(document, path, name), dotted((*path[:-1], name))
    file_key = next(iter(document[root]["cubercnn"]["wds_file_urls"]["seq_000"]))
    path = (root, "cubercnn", "wds_file_urls", "seq_000", file_key, "filename")
    return replaced_at(document, path, name), dotted(path)


def test_manifest_cut_every_few_bytes_fails_naming_file_and_position(
        tmp_path: Path, manifest_document: dict[str, Any]) -> None:
    text = json.dumps(manifest_document, indent=1).encode()
    path = tmp_path / "manifest.json"
    for cut in range(0, len(text), MANIFEST_TRUNCATION_STEP):
        error = try_manifest(path, text[:cut])
        assert error is not None, f"a manifest cut at byte {cut} was accepted"
        assert_clear_refusal(error, path, "<root>")
    assert folder_listing(tmp_path) == ["manifest.json"]


def test_every_manifest_field_with_an_odd_value_loads_or_fails_naming_that_field(
        tmp_path: Path, manifest_document: dict[str, Any]) -> None:
    path = tmp_path / "manifest.json"
    fields = list(leaf_paths(manifest_document))[:MANIFEST_ODD_VALUE_FIELDS]
    for field in fields:
        for value in ODD_VALUES:
            error = try_manifest(path, json.dumps(replaced_at(manifest_document, field, value)).encode())
            if error is not None:
                assert_clear_refusal(error, path, dotted(field))
    assert folder_listing(tmp_path) == ["manifest.json"]


def test_odd_config_sequence_and_file_names_are_refused_and_the_cli_writes_nothing(
        tmp_path: Path, manifest_document: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "manifest.json"
    out = tmp_path / "out"
    for which in range(MANIFEST_NAME_KEYS):
        for name in ODD_NAMES:
            document, field = manifest_with_name(manifest_document, which, name)
            error = try_manifest(path, json.dumps(document).encode())
            assert error is not None, f"{field} = {name!r} was accepted"
            assert_clear_refusal(error, path, field)
            status = cli_main(["download", "--config-name", "cubercnn", "--input-json-path", str(path),
                               "--output-folder-path", str(out), "--download-wds-to-local"])
            assert status == 2 and str(path) in capsys.readouterr().err
            assert not out.exists()


# Archives


def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


HOSTILE_MEMBERS: dict[str, tarfile.TarInfo] = {
    "parent_escape": member("../escaped.txt"),
    "deep_escape": member("assets/a/../../../escaped.txt"),
    "dot_slash_escape": member("./../escaped.txt"),
    "absolute": member("/tmp/escaped.txt"),
    "windows_absolute": member("C:\\escaped.txt"),
    "symlink_out": member("assets/link", tarfile.SYMTYPE, link="/etc/passwd"),
    "symlink_inside": member("assets/link", tarfile.SYMTYPE, link="ok.txt"),
    "hardlink": member("assets/hard", tarfile.LNKTYPE, link="assets/ok.txt"),
    "hardlink_out": member("assets/hard", tarfile.LNKTYPE, link="/etc/passwd"),
    "char_device": member("assets/tty", tarfile.CHRTYPE),
    "block_device": member("assets/sda", tarfile.BLKTYPE),
    "fifo": member("assets/pipe", tarfile.FIFOTYPE),
    "pax_long_name_escape": member("assets/" + "d/" * 60 + "../" * 62 + "escaped.txt"),
}


def hostile_tar(path: Path, hostile: tarfile.TarInfo, fmt: int = tarfile.PAX_FORMAT) -> Path:
    """A tar whose first member is a harmless sample and whose second is `hostile`."""
    with tarfile.open(path, "w", format=fmt) as tar:
        good = member("assets/ok.txt", size=2)
        tar.addfile(good, io.BytesIO(b"ok"))
        tar.addfile(hostile, io.BytesIO(b"x" * hostile.size) if hostile.isreg() else None)
    return path


def read_versioned(archive: Path, out: Path) -> None:
    extract_tar_safely(archive, out / "extracted")


def read_shard(archive: Path, out: Path) -> None:
    list(iter_tar_samples(archive))


def read_stream(archive: Path, out: Path) -> None:
    list(ShardStream([str(archive)]))


def read_preprocess(archive: Path, out: Path) -> None:
    preprocess_shards([archive], PreprocessConfig.from_mapping("p", {"source_config": "c"}, "test", "p"),
                      out / "shards")


ARCHIVE_READERS: dict[str, Callable[[Path, Path], None]] = {
    "versioned_extract": read_versioned, "shard_reader": read_shard, "shard_stream": read_stream,
    "preprocess": read_preprocess,
}


@pytest.mark.parametrize("reader", ARCHIVE_READERS.values(), ids=ARCHIVE_READERS.keys())
@pytest.mark.parametrize("hostile", HOSTILE_MEMBERS.values(), ids=HOSTILE_MEMBERS.keys())
def test_hostile_tar_member_is_refused_by_every_reader_naming_archive_and_member_and_nothing_is_written(
        tmp_path: Path, hostile: tarfile.TarInfo, reader: Callable[[Path, Path], None]) -> None:
    (tmp_path / "in").mkdir()
    archive = hostile_tar(tmp_path / "in" / "hostile.tar", hostile)
    out = tmp_path / "out" / "nested"
    out.mkdir(parents=True)

    with pytest.raises(UnsafeArchiveError) as raised:
        reader(archive, out)

    assert str(raised.value).startswith(f"{archive}: member {hostile.name!r} rejected: ")
    assert folder_listing(tmp_path / "out") == ["nested"]
    assert folder_listing(tmp_path / "in") == ["hostile.tar"]


BOMBS: dict[str, str] = {"gzip": "w:gz", "bzip2": "w:bz2", "xz": "w:xz"}
BOMB_BYTES = 8 << 20
BOMB_LIMIT = 1 << 20


@pytest.mark.parametrize("mode", BOMBS.values(), ids=BOMBS.keys())
def test_compressed_tar_bomb_is_refused_at_the_size_limit_and_nothing_is_extracted(tmp_path: Path, mode: str) -> None:
    archive = tmp_path / "bomb.tar"
    with tarfile.open(archive, mode) as tar:
        tar.addfile(member("assets/zeros.bin", size=BOMB_BYTES), io.BytesIO(bytes(BOMB_BYTES)))
    assert archive.stat().st_size < BOMB_BYTES // 100

    with pytest.raises(UnsafeArchiveError, match=f"expands past the {BOMB_LIMIT}-byte limit"):
        extract_tar_safely(archive, tmp_path / "out", max_bytes=BOMB_LIMIT)

    assert folder_listing(tmp_path) == ["bomb.tar"]


def test_tar_with_too_many_members_is_refused_and_nothing_is_extracted(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as tar:
        for index in range(101):
            tar.addfile(member(f"assets/{index}.txt", size=0), io.BytesIO(b""))
    with pytest.raises(UnsafeArchiveError, match="more than 100 members"):
        extract_tar_safely(archive, tmp_path / "out", max_members=100)
    assert folder_listing(tmp_path) == ["many.tar"]


# Pickles


class CreatesMarker:
    """Unpickling this runs `open(marker, "w")`: the marker file appears only if something unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


PICKLE_EXTENSIONS = ["pyd", "pickle", "pkl", "pth", "pt", "joblib"]
COMPRESSIONS: dict[str, Callable[[bytes], bytes]] = {
    "plain": bytes, "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


def test_pickled_members_in_shards_are_never_unpickled_by_any_reader(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.marker"
    payload = pickle.dumps(CreatesMarker(marker))
    members = {f"{extension}{'' if name == 'plain' else '.' + name}": compress(payload)
               for extension in PICKLE_EXTENSIONS for name, compress in COMPRESSIONS.items()}
    shards = tmp_path / "shards"
    shards.mkdir()
    with ShardWriter(shards) as writer:
        writer.write("seq_a_f0000", {**members, "json": b"{}"})
    write_index(shards, writer.index)
    shard = str(next(shards.glob("*.tar")))
    config = PreprocessConfig.from_mapping("p", {"source_config": "c"}, "test", "p")

    streamed = next(iter(ShardStream([shard])))
    mapped = IndexedShardDataset([shard])[0]
    raw = dict(iter_tar_samples(Path(shard)))["seq_a_f0000"]
    preprocess_shards([Path(shard)], config, tmp_path / "preprocessed")
    assert verify_shard_set(shards).problems == ()

    assert not marker.exists()
    for sample in (streamed, mapped, raw):
        assert {extension: sample[extension] for extension in members} == members
    pickle.loads(payload)
    assert marker.exists()
