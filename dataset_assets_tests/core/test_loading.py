from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataset_assets.core.errors import DatasetAssetsError, SplitError
from dataset_assets.core.loading import load_yaml_and_extract_tar_list, make_shard_dataset
from dataset_assets.core.shards import ShardWriter
from dataset_assets.core.splits import split_sequences, write_split_yamls


def png_bytes(width: int = 96, height: int = 72) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (255, 128, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(frame: int) -> bytes:
    buffer = io.BytesIO()
    numpy.save(buffer, numpy.full((2, 3), frame, dtype=numpy.float32), allow_pickle=False)
    return buffer.getvalue()


def write_sequence(folder: Path, sequence: str, frames: int, per_shard: int) -> list[Path]:
    with ShardWriter(folder / sequence, max_samples=per_shard) as writer:
        for frame in range(frames):
            ground_truth = json.dumps({"sequence": sequence, "frame": frame}).encode()
            sample = {"png": png_bytes(), "json": ground_truth, "npy": npy_bytes(frame)}
            writer.write(f"{sequence}_f{frame:04d}", sample)
    return [folder / sequence / shard.name for shard in writer.shards]


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_tar_list_resolves_relative_paths_against_yaml_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_yaml(
        tmp_path / "data" / "local_all_tars.yaml",
        "tars:\n  '0':\n  - 0/shards-0000.tar\n  - 0/shards-0001.tar\n  seq_b:\n  - /abs/seq_b/shards-0000.tar\n",
    )
    monkeypatch.chdir(tmp_path)

    tars = load_yaml_and_extract_tar_list("data/local_all_tars.yaml")

    folder = tmp_path / "data"
    expected = [str(folder / "0" / "shards-0000.tar"), str(folder / "0" / "shards-0001.tar")]
    assert tars == expected + ["/abs/seq_b/shards-0000.tar"]
    assert all(os.path.isabs(tar) for tar in tars)


def test_tar_list_keeps_urls(tmp_path: Path) -> None:
    urls = [
        "https://cdn.example.test/seq/shards-0000.tar?Expires=1&Signature=abc",
        "http://127.0.0.1:8000/seq/shards-0001.tar",
        "s3://bucket/seq/shards-0002.tar",
    ]
    path = write_yaml(tmp_path / "streamable_all_tars.yaml", json.dumps({"tars": {"seq": urls}}))

    assert load_yaml_and_extract_tar_list(path) == urls


def test_pipe_entry_becomes_a_path_not_a_command(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "local_all_tars.yaml", "tars:\n  seq:\n  - 'pipe:touch owned'\n")

    assert load_yaml_and_extract_tar_list(path) == [str(tmp_path / "pipe:touch owned")]


def test_tar_list_round_trips_written_split_yamls(tmp_path: Path) -> None:
    paths = {name: write_sequence(tmp_path, name, frames=2, per_shard=1) for name in ("seq_a", "seq_b", "seq_c")}
    relative = {name: [str(path.relative_to(tmp_path)) for path in tars] for name, tars in paths.items()}

    written = write_split_yamls(tmp_path, split_sequences(relative, ratio=0.7), relative, "local")

    all_tars = load_yaml_and_extract_tar_list(written["all"])
    assert sorted(all_tars) == sorted(str(path) for tars in paths.values() for path in tars)
    assert all(Path(tar).is_file() for tar in all_tars)
    train, validation = (load_yaml_and_extract_tar_list(written[part]) for part in ("train", "validation"))
    assert sorted(train + validation) == sorted(all_tars) and not set(train) & set(validation)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("tars: [a, b\n", "(document)"),
        ("- a.tar\n", "tars"),
        ("other: {}\n", "tars"),
        ("tars: [a.tar]\n", "tars"),
        ("tars:\n  seq: a.tar\n", "tars.seq"),
        ("tars:\n  seq:\n  - 5\n", "tars.seq[0]"),
    ],
)
def test_malformed_tar_yaml_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = write_yaml(tmp_path / "local_all_tars.yaml", text)

    with pytest.raises(SplitError) as caught:
        load_yaml_and_extract_tar_list(path)

    assert caught.value.field == field
    assert str(path) in str(caught.value)


def test_empty_split_yaml_gives_an_empty_list(tmp_path: Path) -> None:
    assert load_yaml_and_extract_tar_list(write_yaml(tmp_path / "local_validation_tars.yaml", "tars: {}\n")) == []


def test_dataset_decodes_images_json_and_npy(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", frames=3, per_shard=2)

    samples = list(make_shard_dataset([str(tar) for tar in tars]))

    assert [sample["__key__"] for sample in samples] == ["seq_a_f0000", "seq_a_f0001", "seq_a_f0002"]
    image = samples[0]["png"]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.shape == (3, 72, 96)
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))
    assert samples[2]["json"] == {"sequence": "seq_a", "frame": 2}
    assert isinstance(samples[2]["npy"], numpy.ndarray)
    numpy.testing.assert_array_equal(samples[2]["npy"], numpy.full((2, 3), 2, dtype=numpy.float32))


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_dataset_never_unpickles_members(tmp_path: Path) -> None:
    payload = pickle.dumps(_Boom())
    with ShardWriter(tmp_path) as writer:
        writer.write("seq_a_f0000", {"pyd": payload, "pth": payload, "json": b"{}"})

    sample = next(iter(make_shard_dataset([str(tmp_path / "shards-0000.tar")])))

    assert (sample["pyd"], sample["pth"]) == (payload, payload)


def test_pickled_npy_member_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    numpy.save(buffer, numpy.array([_Boom()], dtype=object), allow_pickle=True)
    with ShardWriter(tmp_path) as writer:
        writer.write("seq_a_f0000", {"npy": buffer.getvalue()})

    with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar: sample 'seq_a_f0000': member 'npy'"):
        list(make_shard_dataset([str(tmp_path / "shards-0000.tar")]))


def add_frame_index(sample: dict) -> dict:
    return {"key": sample["__key__"], "frame": sample["json"]["frame"]}


def test_decoder_is_applied_to_every_sample(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", frames=2, per_shard=1)

    samples = list(make_shard_dataset([str(tar) for tar in tars], decoder=add_frame_index))

    assert [(sample["key"], sample["frame"]) for sample in samples] == [("seq_a_f0000", 0), ("seq_a_f0001", 1)]


def test_shuffle_buffer_keeps_every_sample_once(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", frames=12, per_shard=4)

    keys = [sample["__key__"] for sample in make_shard_dataset([str(tar) for tar in tars], shuffle_buffer=8)]

    assert sorted(keys) == [f"seq_a_f{frame:04d}" for frame in range(12)]


def test_dataloader_two_workers_yield_each_sample_once(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", frames=10, per_shard=2) + write_sequence(tmp_path, "seq_b", 5, 2)
    dataset = make_shard_dataset([str(tar) for tar in tars], decoder=add_frame_index)

    loaded = list(DataLoader(dataset, batch_size=None, num_workers=2))

    keys = [sample["key"] for sample in loaded]
    expected = [f"seq_a_f{frame:04d}" for frame in range(10)] + [f"seq_b_f{frame:04d}" for frame in range(5)]
    assert sorted(keys) == sorted(expected)
    assert len(keys) == len(set(keys))


def test_more_workers_than_shards_is_not_an_error(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", frames=3, per_shard=10)
    dataset = make_shard_dataset([str(tars[0])], decoder=add_frame_index)

    loaded = list(DataLoader(dataset, batch_size=None, num_workers=2))

    assert sorted(sample["key"] for sample in loaded) == ["seq_a_f0000", "seq_a_f0001", "seq_a_f0002"]


@pytest.mark.parametrize("tar_list", [["pipe:cat /etc/passwd"], []])
def test_dataset_refuses_pipes_and_empty_lists(tar_list: list[str]) -> None:
    with pytest.raises(DatasetAssetsError):
        make_shard_dataset(tar_list)


def test_dataset_refuses_a_single_string(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        make_shard_dataset(str(tmp_path / "shards-0000.tar"))
