"""Catalog loading: the packaged catalog is valid; every malformed field is named with its value."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dataset_assets.core.catalog import PACKAGED_CATALOG, SplitSpec, load_catalog
from dataset_assets.core.errors import CatalogError

VALID = {
    "datasets": {
        "ds": {
            "kind": "signed_url",
            "manifest": {"url": "http://127.0.0.1:1/manifest.json"},
            "preprocess": {"small": {"source_config": "cubercnn", "image_size": [8, 8]}},
            "split": {"ratio": 0.8, "seed": 7},
        }
    }
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def with_change(dotted: str, value: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(VALID))
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


def test_packaged_catalog_loads_with_demo_dataset() -> None:
    catalog = load_catalog(PACKAGED_CATALOG)
    demo = catalog.dataset("demo_aria")
    assert demo.kind == "signed_url"
    assert demo.raw_configs == ["cubercnn", "efm"]
    assert set(demo.preprocess) == {"cubercnn_small", "efm_png"}


def test_valid_catalog_values_are_read(tmp_path: Path) -> None:
    spec = load_catalog(write(tmp_path, VALID)).dataset("ds")
    assert spec.split.ratio == 0.8 and spec.split.seed == 7 and spec.split.max_sequences is None
    assert spec.preprocess["small"].image_size == (8, 8)
    assert spec.manifest.url == "http://127.0.0.1:1/manifest.json"


@pytest.mark.parametrize(
    ("dotted", "value", "field", "shown"),
    [
        ("datasets.ds.kind", KeyError, "datasets.ds.kind", "None"),
        ("datasets.ds.kind", "ftp_site", "datasets.ds.kind", "'ftp_site'"),
        ("datasets.ds.manifest", KeyError, "datasets.ds.manifest", "None"),
        ("datasets.ds.manifest", {"url": "ftp://x/m.json"}, "datasets.ds.manifest.url", "'ftp://x/m.json'"),
        ("datasets.ds.split", {"ratio": 1.5}, "datasets.ds.split.ratio", "1.5"),
        ("datasets.ds.split", {"seed": "x"}, "datasets.ds.split.seed", "'x'"),
        ("datasets.ds.split", {"max_sequences": 0}, "datasets.ds.split.max_sequences", "0"),
        ("datasets.ds.preprocess", {}, "datasets.ds.preprocess", "{}"),
        ("datasets.ds.preprocess", {"bad-name": {"source_config": "c"}}, "datasets.ds.preprocess.bad-name",
         "'bad-name'"),
        ("datasets.ds.preprocess", {"p": {"source_config": "c", "image_quality": 500}},
         "datasets.ds.preprocess.p.image_quality", "500"),
        ("datasets.ds.preprocess", {"p": {"image_size": [8, 8]}}, "datasets.ds.preprocess.p.source_config", "None"),
        ("datasets.ds.colour", "blue", "datasets.ds.colour", "'colour'"),
        ("datasets.ds.owners", "me", "datasets.ds.owners", "'me'"),
    ],
)
def test_malformed_catalog_error_names_file_field_and_value(
    tmp_path: Path, dotted: str, value: object, field: str, shown: str
) -> None:
    path = write(tmp_path, with_change(dotted, value))
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: field '{field}'"), message
    assert f"(got {shown})" in message, message


def test_invalid_yaml_error_names_file_and_position(tmp_path: Path) -> None:
    path = write(tmp_path, "datasets:\n  ds: [unclosed\n")
    with pytest.raises(CatalogError, match=rf"{path}: field '<root>' is not valid YAML.*line 3"):
        load_catalog(path)


def test_missing_catalog_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nope.yaml")


def test_environment_references_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = with_change("datasets.ds.manifest", {"url": "${SRC_URL:-http://fallback}/m.json"})
    path = write(tmp_path, data)
    assert load_catalog(path).dataset("ds").manifest.url == "http://fallback/m.json"
    monkeypatch.setenv("SRC_URL", "http://127.0.0.1:9")
    assert load_catalog(path).dataset("ds").manifest.url == "http://127.0.0.1:9/m.json"


def test_unset_environment_reference_without_default_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, with_change("datasets.ds.manifest", {"url": "${NO_SUCH_VARIABLE_X}/m.json"}))
    with pytest.raises(CatalogError, match=r"field 'datasets.ds.manifest.url' references .*NO_SUCH_VARIABLE_X"):
        load_catalog(path)


def test_relative_manifest_path_resolves_against_catalog_folder(tmp_path: Path) -> None:
    path = write(tmp_path, with_change("datasets.ds.manifest", {"path": "published/m.json"}))
    assert load_catalog(path).dataset("ds").manifest.path == tmp_path / "published" / "m.json"


def test_split_hash_changes_with_each_setting_and_with_the_explicit_split_file(tmp_path: Path) -> None:
    explicit = tmp_path / "split.json"
    explicit.write_text('{"train_sequences": ["a"], "val_sequences": ["b"]}')
    base = SplitSpec(json_path=explicit)
    hashes = {base.hash, SplitSpec().hash, SplitSpec(ratio=0.8).hash, SplitSpec(seed=1).hash,
              SplitSpec(max_sequences=3).hash}
    explicit.write_text('{"train_sequences": ["b"], "val_sequences": ["a"]}')
    hashes.add(base.hash)

    assert len(hashes) == 6
    assert SplitSpec(seed=1).hash == SplitSpec(seed=1).hash


@pytest.mark.parametrize("prefix", [None, ["releases"], {"a": 1}, True])
def test_a_publish_prefix_that_is_not_a_string_is_refused(tmp_path: Path, prefix: object) -> None:
    body = {"kind": "versioned", "base_url": "http://127.0.0.1:1/objects", "versions": ["2023_07_28"],
            "components": {"annotations": {}, "assets": {}}, "publish": {"bucket": "b", "prefix": prefix}}
    path = write(tmp_path, {"datasets": {"objects": body}})
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value).startswith(f"{path}: field 'datasets.objects.publish.prefix' must be a string")


@pytest.mark.parametrize("bucket", ["s3://my-datasets", "my-datasets/releases", "my datasets"])
def test_a_publish_bucket_that_is_not_a_bucket_name_is_refused(tmp_path: Path, bucket: str) -> None:
    body = {"kind": "versioned", "base_url": "http://127.0.0.1:1/objects", "versions": ["2023_07_28"],
            "components": {"annotations": {}, "assets": {}}, "publish": {"bucket": bucket}}
    path = write(tmp_path, {"datasets": {"objects": body}})
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value).startswith(f"{path}: field 'datasets.objects.publish.bucket' must be a bucket name")


@pytest.mark.parametrize("endpoint", ["", None, "${NO_SUCH_ENDPOINT_VARIABLE:-}"])
def test_an_empty_publish_endpoint_means_aws(tmp_path: Path, endpoint: object) -> None:
    body = {"kind": "versioned", "base_url": "http://127.0.0.1:1/objects", "versions": ["2023_07_28"],
            "components": {"annotations": {}, "assets": {}}, "publish": {"bucket": "b", "endpoint_url": endpoint}}
    source = load_catalog(write(tmp_path, {"datasets": {"objects": body}})).dataset("objects").versioned
    assert source is not None and source.publish is not None
    assert source.publish.endpoint_url is None


def test_a_catalog_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "latin1.yaml").write_bytes("datasets:\n  caf\xe9: {}\n".encode("latin-1"))
    for path in (tmp_path / "folder.yaml", tmp_path / "latin1.yaml"):
        with pytest.raises(CatalogError, match=rf"^{path}: field '<file>' cannot be read"):
            load_catalog(path)
