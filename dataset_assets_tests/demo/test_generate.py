"""Tests of the demo source generator: layout, determinism, idempotence and decodable samples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from dataset_assets.core.shards import iter_tar_samples
from dataset_assets.core.storage import digest_file
from dataset_assets.demo.generate import CONFIGS, SOURCE_FILE, DemoFile, generate_demo_source
from dataset_assets_tests.demo import fixtures

demo_source = fixtures.demo_source
demo_files = fixtures.demo_files

SMALL = {"sequences": 2, "shards_per_sequence": 2, "samples_per_shard": 2}


def _decoded_samples(files: list[DemoFile], config: str) -> list[dict]:
    urls = [str(demo_file.path) for demo_file in files if demo_file.config == config]
    return list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))


def test_layout_holds_every_config_sequence_and_shard(demo_source: Path, demo_files: list[DemoFile]) -> None:
    relative = {demo_file.path.relative_to(demo_source).as_posix() for demo_file in demo_files}

    assert relative == {
        f"{config}/seq_{index:03d}/shards-{shard:04d}.tar"
        for config in ("cubercnn", "efm") for index in range(8) for shard in range(2)
    }
    assert [(f.config, f.sequence, f.filename) for f in demo_files] == sorted(
        (f.config, f.sequence, f.filename) for f in demo_files
    )


def test_reported_size_and_sha1_match_the_files(demo_files: list[DemoFile]) -> None:
    for demo_file in demo_files:
        digest = digest_file(demo_file.path)
        assert (demo_file.size, demo_file.sha1) == (digest.size, digest.sha1)


def test_whole_demo_stays_small(demo_files: list[DemoFile]) -> None:
    assert sum(demo_file.size for demo_file in demo_files) < 2 * 1024 * 1024


def test_generated_shards_are_byte_identical_across_runs(tmp_path: Path) -> None:
    first = generate_demo_source(tmp_path / "a", seed=7, **SMALL)
    second = generate_demo_source(tmp_path / "b", seed=7, **SMALL)

    assert [f.sha1 for f in first] == [f.sha1 for f in second]
    for one, other in zip(first, second):
        assert one.path.read_bytes() == other.path.read_bytes()
    assert (tmp_path / "a" / SOURCE_FILE).read_bytes() == (tmp_path / "b" / SOURCE_FILE).read_bytes()


def test_different_seed_gives_different_content(tmp_path: Path) -> None:
    first = generate_demo_source(tmp_path / "a", seed=1, **SMALL)
    second = generate_demo_source(tmp_path / "b", seed=2, **SMALL)

    assert not {f.sha1 for f in first} & {f.sha1 for f in second}


def test_second_run_with_same_arguments_does_not_rewrite(tmp_path: Path) -> None:
    files = generate_demo_source(tmp_path, **SMALL)
    before = {f.path: f.path.stat().st_ino for f in files}

    again = generate_demo_source(tmp_path, **SMALL)

    assert again == files
    assert {f.path: f.path.stat().st_ino for f in again} == before


def test_damaged_shard_is_regenerated(tmp_path: Path) -> None:
    files = generate_demo_source(tmp_path, **SMALL)
    files[1].path.write_bytes(b"truncated")

    again = generate_demo_source(tmp_path, **SMALL)

    assert again == files
    assert digest_file(files[1].path).sha1 == files[1].sha1


def test_smaller_run_prunes_sequences_left_from_a_larger_one(tmp_path: Path) -> None:
    generate_demo_source(tmp_path, sequences=3, shards_per_sequence=1, samples_per_shard=1)

    files = generate_demo_source(tmp_path, sequences=2, shards_per_sequence=1, samples_per_shard=1)

    for config in CONFIGS:
        assert sorted(p.name for p in (tmp_path / config).iterdir()) == ["seq_000", "seq_001"]
    assert len(files) == 4
    assert json.loads((tmp_path / SOURCE_FILE).read_text())["arguments"]["sequences"] == 2


def test_shard_count_and_samples_per_shard_follow_the_arguments(tmp_path: Path) -> None:
    files = generate_demo_source(tmp_path, sequences=1, shards_per_sequence=3, samples_per_shard=5)

    assert [f.filename for f in files if f.config == "efm"] == ["shards-0000.tar", "shards-0001.tar", "shards-0002.tar"]
    keys = [key for f in files if f.config == "efm" for key, _ in iter_tar_samples(f.path)]
    assert keys == [f"seq_000_f{frame:04d}" for frame in range(15)]


@pytest.mark.parametrize("argument", ["sequences", "shards_per_sequence", "samples_per_shard"])
def test_non_positive_counts_are_refused(tmp_path: Path, argument: str) -> None:
    with pytest.raises(ValueError, match=f"{argument} must be >= 1, got 0"):
        generate_demo_source(tmp_path, **{**SMALL, argument: 0})


def test_every_member_decodes_with_webdataset(demo_files: list[DemoFile]) -> None:
    for config, (width, height), tensor_shape in (("cubercnn", (96, 72), (4, 4)), ("efm", (64, 48), (24, 32))):
        samples = _decoded_samples(demo_files, config)

        assert len(samples) == 8 * 2 * 4
        for sample in samples:
            assert sample["jpg"].shape == (height, width, 3)
            assert sample["jpg"].dtype == np.uint8
            assert sample["npy"].shape == tensor_shape
            assert sample["npy"].dtype == np.float32
            sequence, frame = sample["json"]["sequence"], sample["json"]["frame"]
            assert sample["__key__"] == f"{sequence}_f{frame:04d}"


def test_ground_truth_describes_each_frame(demo_files: list[DemoFile]) -> None:
    for config in CONFIGS:
        samples = _decoded_samples(demo_files, config)
        for sample in samples:
            truth = sample["json"]
            assert set(truth) == {"sequence", "frame", "timestamp_ns", "objects"}
            assert 1 <= len(truth["objects"]) <= 3
            height, width = sample["jpg"].shape[:2]
            for demo_object in truth["objects"]:
                x0, y0, x1, y1 = demo_object["bbox2d"]
                assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
                assert isinstance(demo_object["category"], str)
        by_sequence: dict[str, list[int]] = {}
        for sample in samples:
            by_sequence.setdefault(sample["json"]["sequence"], []).append(sample["json"]["timestamp_ns"])
        assert all(stamps == sorted(stamps) and len(set(stamps)) == len(stamps) for stamps in by_sequence.values())


def _ring_mean(image: np.ndarray, box: list[int], gap: int = 1, width: int = 2) -> np.ndarray:
    """Mean colour of a `width`-pixel band around `box`, `gap` pixels away from its edge."""
    x0, y0, x1, y1 = box
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[max(0, y0 - gap - width):y1 + gap + width, max(0, x0 - gap - width):x1 + gap + width] = True
    mask[max(0, y0 - gap):y1 + gap, max(0, x0 - gap):x1 + gap] = False
    return image[mask].mean(axis=0)


def test_topmost_box_covers_a_flat_rectangle_that_stands_out(demo_files: list[DemoFile]) -> None:
    for config in CONFIGS:
        for sample in _decoded_samples(demo_files, config):
            image = sample["jpg"].astype(float)
            box = sample["json"]["objects"][-1]["bbox2d"]
            x0, y0, x1, y1 = box
            inside = image[y0 + 2:y1 - 2, x0 + 2:x1 - 2].reshape(-1, 3)
            assert inside.std(axis=0).max() < 12, sample["__key__"]
            assert np.abs(inside.mean(axis=0) - _ring_mean(image, box)).max() > 15, sample["__key__"]


def test_cubercnn_tensor_is_a_rigid_camera_pose(demo_files: list[DemoFile]) -> None:
    for sample in _decoded_samples(demo_files, "cubercnn"):
        pose = sample["npy"].astype(np.float64)
        rotation = pose[:3, :3]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-5)
        np.testing.assert_allclose(pose[3], [0, 0, 0, 1])


def test_efm_depth_is_nearer_inside_object_boxes(demo_files: list[DemoFile]) -> None:
    for sample in _decoded_samples(demo_files, "efm"):
        depth = sample["npy"]
        assert depth.min() > 0
        x0, y0, x1, y1 = sample["json"]["objects"][-1]["bbox2d"]
        object_depth = depth[(y0 + y1) // 4, (x0 + x1) // 4]
        assert object_depth < np.median(depth[:, 0]), sample["__key__"]
