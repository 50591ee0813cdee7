from __future__ import annotations

import json
import random
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dataset_assets.core import storage
from dataset_assets.core.errors import DatasetAssetsError, SplitError
from dataset_assets.core.splits import Split, load_split_json, split_sequences, write_split_yamls

SEQUENCES = [f"sequence_{index:03d}" for index in range(23)]


@pytest.fixture()
def global_random_state() -> Iterator[None]:
    """The ATEK reference below seeds the global RNG; give it back untouched to other tests."""
    state = random.getstate()
    yield
    random.setstate(state)


def atek_split(sequences: list[str], ratio: float, seed: int) -> tuple[list[str], list[str]]:
    """ATEK's `split_train_val_sequences_with_ratio`, reduced to the sequence names."""
    random.seed(seed)
    names = list(sequences)
    names.sort()
    random.shuffle(names)
    split_point = int(len(names) * ratio)
    return names[:split_point], names[split_point:]


@pytest.mark.parametrize("seed", [0, 1, 42, 2024])
@pytest.mark.parametrize("count", [1, 2, 10, 23])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9, 1.0])
def test_split_matches_atek_random_seed_semantics(
    global_random_state: None, seed: int, count: int, ratio: float
) -> None:
    sequences = list(reversed(SEQUENCES[:count]))

    split = split_sequences(sequences, ratio=ratio, seed=seed)

    train, validation = atek_split(sequences, ratio, seed)
    assert (list(split.train), list(split.validation)) == (train, validation)
    assert split.ignored == ()


def test_split_defaults_are_ratio_09_and_seed_42(global_random_state: None) -> None:
    train, validation = atek_split(SEQUENCES, 0.9, 42)

    assert split_sequences(SEQUENCES) == Split(train=tuple(train), validation=tuple(validation))
    assert len(train) == 20 and len(validation) == 3


def test_split_ignores_input_order_and_leaves_global_random_alone() -> None:
    random.seed(7)
    expected_next = random.random()
    random.seed(7)

    shuffled = split_sequences(random.Random(3).sample(SEQUENCES, len(SEQUENCES)))

    assert random.random() == expected_next
    assert shuffled == split_sequences(SEQUENCES)


def test_all_is_train_then_validation() -> None:
    split = split_sequences(SEQUENCES, ratio=0.5)

    assert split.all == split.train + split.validation
    assert sorted(split.all) == SEQUENCES


def test_max_sequences_keeps_the_first_names_after_shuffling() -> None:
    full = split_sequences(SEQUENCES, ratio=1.0, seed=5)

    limited = split_sequences(SEQUENCES, ratio=0.5, seed=5, max_sequences=6)

    assert limited.all == full.train[:6]
    assert (len(limited.train), len(limited.validation)) == (3, 3)


@pytest.mark.parametrize("max_sequences", [None, 0, -1, 100])
def test_max_sequences_none_zero_negative_or_large_keeps_all(max_sequences: int | None) -> None:
    assert split_sequences(SEQUENCES, max_sequences=max_sequences) == split_sequences(SEQUENCES)


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), True])
def test_ratio_outside_zero_to_one_is_a_split_error(ratio: float) -> None:
    with pytest.raises(SplitError) as caught:
        split_sequences(SEQUENCES, ratio=ratio)

    assert caught.value.field == "ratio"
    assert repr(ratio) in str(caught.value)


def write_json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_split_json_keeps_file_order_and_reports_unavailable(tmp_path: Path) -> None:
    path = write_json(tmp_path / "split.json", {"train_sequences": ["b", "a", "gone"], "val_sequences": ["c", "x"]})

    split = load_split_json(path, available=["a", "b", "c", "d"])

    assert split == Split(train=("b", "a"), validation=("c",), ignored=("gone", "x"))


def test_split_json_rejects_overlap(tmp_path: Path) -> None:
    path = write_json(tmp_path / "split.json", {"train_sequences": ["a", "b"], "val_sequences": ["c", "b"]})

    with pytest.raises(SplitError) as caught:
        load_split_json(path, available=["a", "b", "c"])

    assert caught.value.field == "val_sequences[1]"
    assert str(path) in str(caught.value) and "'b'" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "field", "shown"),
    [
        ('{"train_sequences": ["a",', "(document)", '{"train_sequences": ["a",'),
        ('["a", "b"]', "(root)", "['a', 'b']"),
        ('{"train_sequences": ["a"]}', "val_sequences", "None"),
        ('{"train_sequences": "a", "val_sequences": []}', "train_sequences", "'a'"),
        ('{"train_sequences": ["a", 7], "val_sequences": []}', "train_sequences[1]", "7"),
        ('{"train_sequences": ["a"], "val_sequences": ["b", "b"]}', "val_sequences[1]", "'b'"),
    ],
)
def test_bad_split_json_names_file_field_and_value(tmp_path: Path, text: str, field: str, shown: str) -> None:
    path = tmp_path / "split.json"
    path.write_text(text)

    with pytest.raises(SplitError) as caught:
        load_split_json(path, available=["a", "b"])

    assert caught.value.field == field
    assert str(path) in str(caught.value)
    assert shown in str(caught.value)


def test_missing_split_json_is_a_split_error(tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="cannot be read"):
        load_split_json(tmp_path / "absent.json", available=["a"])


def atek_yaml_bytes(path: Path, tars: dict[str, list[str]]) -> bytes:
    """What ATEK's downloader writes: `yaml.dump({"tars": ...}, file, default_flow_style=False)`."""
    with open(path, "w") as file:
        yaml.dump({"tars": tars}, file, default_flow_style=False)
    return path.read_bytes()


@pytest.mark.parametrize("prefix", ["local", "streamable"])
def test_split_yaml_bytes_match_atek_yaml_dump(tmp_path: Path, prefix: str) -> None:
    names = ["0", "10", "seq_b", "seq_a", "1"]
    split = split_sequences(names, ratio=0.6, seed=42)
    if prefix == "local":
        tars = {name: [f"{name}/shards-0000.tar", f"{name}/shards-0001.tar"] for name in names}
    else:
        tars = {name: [f"https://example.test/{name}/shards-0000.tar?sig=abc&exp=9"] for name in names}
    out = tmp_path / "out"

    written = write_split_yamls(out, split, {name: tuple(paths) for name, paths in tars.items()}, prefix)

    assert written == {part: out / f"{prefix}_{part}_tars.yaml" for part in ("train", "validation", "all")}
    parts = {"train": split.train, "validation": split.validation, "all": split.all}
    for part, sequences in parts.items():
        expected = atek_yaml_bytes(tmp_path / f"atek_{part}.yaml", {name: tars[name] for name in sequences})
        assert written[part].read_bytes() == expected
        assert yaml.safe_load(expected)["tars"] == {name: tars[name] for name in sequences}
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in written.values())


def test_streamable_yamls_holding_signed_urls_are_private_like_the_manifest_they_come_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The links are live credentials until they expire: owner-only, from the `.part` on, as url_manifest.json."""
    published_modes: list[int] = []
    publish_file = storage.publish_file

    def recording_publish(part: Path, final: Path) -> None:
        published_modes.append(stat.S_IMODE(part.stat().st_mode))
        publish_file(part, final)

    monkeypatch.setattr(storage, "publish_file", recording_publish)
    tars = {name: [f"https://example.test/{name}.tar?Expires=9&Signature=SECRET"] for name in ("a", "b", "c")}
    write_split_yamls(tmp_path, Split(train=("a", "b"), validation=("c",)), tars, "streamable")
    write_split_yamls(tmp_path, Split(train=("a",), validation=("b", "c")), tars, "streamable")  # shrinks train first

    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.glob("streamable_*.yaml")}
    assert len(modes) == 3 and set(modes.values()) == {0o600}
    assert published_modes == [0o600] * 7


def test_empty_validation_yaml_matches_atek(tmp_path: Path) -> None:
    split = split_sequences(["a"], ratio=1.0)

    written = write_split_yamls(tmp_path, split, {"a": ["a/shards-0000.tar"]}, "local")

    assert written["validation"].read_text() == "tars: {}\n"


def test_split_yaml_with_missing_tar_list_writes_nothing(tmp_path: Path) -> None:
    split = Split(train=("a",), validation=("b",))

    with pytest.raises(DatasetAssetsError, match="'b'"):
        write_split_yamls(tmp_path / "out", split, {"a": ["a/shards-0000.tar"]}, "local")

    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_split_yaml_prefix_must_be_local_or_streamable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="remote"):
        write_split_yamls(tmp_path, Split(train=(), validation=()), {}, "remote")


def _listed(path: Path) -> set[str]:
    return set(yaml.safe_load(path.read_bytes())["tars"]) if path.exists() else set()


def states_while_replacing(folder: Path, monkeypatch: pytest.MonkeyPatch, old: Split, new: Split,
                           tars: dict[str, list[str]]) -> list[tuple[set[str], set[str]]]:
    """The (train, validation) sequences on disk after each atomic replacement while `new` replaces `old`.

    The real `write_bytes_atomic` runs; the wrapper only records the folder after each replacement.
    """
    write_split_yamls(folder, old, tars, "local")
    states: list[tuple[set[str], set[str]]] = []
    real_write = storage.write_bytes_atomic

    def write_and_record(final: Path, data: bytes, private: bool = False) -> None:
        real_write(final, data, private)
        states.append((_listed(folder / "local_train_tars.yaml"), _listed(folder / "local_validation_tars.yaml")))

    monkeypatch.setattr(storage, "write_bytes_atomic", write_and_record)
    write_split_yamls(folder, new, tars, "local")
    return states


def test_train_and_validation_on_disk_never_overlap_while_a_split_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every state between two atomic replacements (where a kill -9 could leave the folder) is disjoint."""
    tars = {name: [f"{name}/shards-0000.tar"] for name in "abcdef"}
    states = states_while_replacing(tmp_path, monkeypatch, Split(train=("a", "b", "c"), validation=("d", "e")),
                                    Split(train=("a", "d", "f"), validation=("b", "e")), tars)

    assert [train & validation for train, validation in states] == [set()] * len(states)
    assert states[-1] == ({"a", "d", "f"}, {"b", "e"})
    assert len(states) == 5  # train shrunk to {a}, validation shrunk to {e}, then train, validation, all


@pytest.mark.parametrize(("old", "new"), [
    ((("a",), ("b", "c")), (("a", "c"), ("b",))),  # validation shrinks to exactly its new list: c moves to train
    ((("a", "b"), ("c",)), (("a",), ("b", "c"))),
    ((("a", "b"), ("c", "d")), (("c", "d"), ("a", "b"))),
])
def test_no_split_change_lets_train_and_validation_on_disk_share_a_sequence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: tuple[tuple[str, ...], ...], new: tuple[tuple[str, ...], ...]
) -> None:
    tars = {name: [f"{name}/shards-0000.tar"] for name in "abcd"}
    states = states_while_replacing(tmp_path, monkeypatch, Split(*old), Split(*new), tars)

    assert [train & validation for train, validation in states] == [set()] * len(states)
    assert states[-1] == (set(new[0]), set(new[1]))
