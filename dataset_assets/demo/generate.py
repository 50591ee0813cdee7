"""Deterministic generator of the embedded demo source: a small synthetic Aria-like dataset.

The demo publishes two raw configs, `cubercnn` and `efm`, as `<folder>/<config>/<sequence>/shards-NNNN.tar`
WebDataset shards. Every sample holds a JPEG frame (a gradient background with coloured
rectangles standing for objects), JSON ground truth whose 2D boxes are exactly those rectangles,
and a float32 tensor: the camera pose `T_world_camera` (4x4) for `cubercnn`, a 24x32 depth map
for `efm`. All randomness comes from `numpy.random.default_rng` seeded by (seed, config,
sequence), so the same arguments give byte-identical shards on every run and machine (given the
pinned numpy and Pillow, whose bundled libjpeg-turbo fixes the JPEG bytes). `<folder>/source.json`
records the arguments and each file's size and sha1; a folder that already matches is left alone.
"""
from __future__ import annotations

import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dataset_assets.core.shards import ShardWriter
from dataset_assets.core.storage import atomic_folder, digest_file, write_bytes_atomic

CONFIGS = ("cubercnn", "efm")
SOURCE_FILE = "source.json"
GENERATOR_VERSION = 1
CATEGORIES = ("chair", "table", "sofa", "lamp", "bed", "shelf")
FRAME_INTERVAL_NS = 100_000_000
JPEG_QUALITY = 90


@dataclass(frozen=True)
class FrameSpec:
    """Per-config frame geometry: image (width, height) and what the tensor member holds."""

    width: int
    height: int
    tensor: str


FRAME_SPECS = {
    "cubercnn": FrameSpec(width=96, height=72, tensor="T_world_camera"),
    "efm": FrameSpec(width=64, height=48, tensor="depth"),
}
DEPTH_SHAPE = (24, 32)


@dataclass(frozen=True)
class DemoFile:
    """One generated shard of one sequence of one config."""

    config: str
    sequence: str
    filename: str
    path: Path
    size: int
    sha1: str


@dataclass(frozen=True)
class DemoObject:
    """A rectangle drifting across a sequence's frames at constant speed, bouncing off the borders."""

    category: str
    color: tuple[int, int, int]
    width: int
    height: int
    start: tuple[float, float]
    velocity: tuple[float, float]
    depth_m: float

    def bbox(self, frame: int, spec: FrameSpec) -> list[int]:
        """`[x0, y0, x1, y1]` in pixels, end-exclusive; the object bounces off the image borders."""
        x0 = _bounce(self.start[0] + self.velocity[0] * frame, spec.width - self.width)
        y0 = _bounce(self.start[1] + self.velocity[1] * frame, spec.height - self.height)
        return [x0, y0, x0 + self.width, y0 + self.height]


def _bounce(position: float, limit: int) -> int:
    """Fold an unbounded coordinate into [0, limit] as if reflected at both ends."""
    folded = int(round(position)) % (2 * limit)
    return folded if folded <= limit else 2 * limit - folded


def sequence_name(index: int) -> str:
    return f"seq_{index:03d}"


def sample_key(sequence: str, frame: int) -> str:
    return f"{sequence}_f{frame:04d}"


def _rng(seed: int, config: str, sequence_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, CONFIGS.index(config), sequence_index])


def _objects(rng: np.random.Generator, spec: FrameSpec) -> list[DemoObject]:
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        width = int(rng.integers(spec.width // 8, spec.width // 3))
        height = int(rng.integers(spec.height // 8, spec.height // 3))
        objects.append(DemoObject(
            category=CATEGORIES[int(rng.integers(len(CATEGORIES)))],
            color=(int(rng.integers(256)), int(rng.integers(256)), int(rng.integers(256))),
            width=width,
            height=height,
            start=(float(rng.uniform(0, spec.width - width)), float(rng.uniform(0, spec.height - height))),
            velocity=(float(rng.uniform(-3, 3)), float(rng.uniform(-2, 2))),
            depth_m=float(rng.uniform(0.8, 1.4)),
        ))
    return objects


def _background(rng: np.random.Generator, spec: FrameSpec) -> np.ndarray:
    """A smooth two-colour gradient, diagonal so both axes vary."""
    start = rng.uniform(0, 255, size=3)
    end = rng.uniform(0, 255, size=3)
    xs = np.linspace(0.0, 1.0, spec.width)[None, :]
    ys = np.linspace(0.0, 1.0, spec.height)[:, None]
    weight = ((xs + ys) / 2.0)[..., None]
    return start * (1.0 - weight) + end * weight


def _frame_pixels(background: np.ndarray, boxes: list[list[int]], objects: list[DemoObject],
                  noise: np.ndarray) -> np.ndarray:
    image = background.copy()
    for (x0, y0, x1, y1), demo_object in zip(boxes, objects):
        image[y0:y1, x0:x1] = demo_object.color
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _encode_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _encode_npy(tensor: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, tensor.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def _pose(frame: int, yaw_rate: float, speed: np.ndarray) -> np.ndarray:
    """T_world_camera of a camera yawing at `yaw_rate` rad/frame while translating at `speed`."""
    yaw = yaw_rate * frame
    pose = np.eye(4)
    # math, not numpy: numpy may pick SIMD sin/cos by CPU, and the bytes must not depend on the machine.
    pose[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    pose[:3, 3] = speed * frame
    return pose


def _depth(boxes: list[list[int]], objects: list[DemoObject], spec: FrameSpec, wall_m: float) -> np.ndarray:
    """A depth map at DEPTH_SHAPE: a receding floor-to-wall ramp with objects in front of it."""
    rows, cols = DEPTH_SHAPE
    depth = np.repeat(np.linspace(wall_m, wall_m * 0.5, rows)[:, None], cols, axis=1)
    scale_x, scale_y = cols / spec.width, rows / spec.height
    for (x0, y0, x1, y1), demo_object in zip(boxes, objects):
        depth[int(y0 * scale_y):int(np.ceil(y1 * scale_y)), int(x0 * scale_x):int(np.ceil(x1 * scale_x))] = (
            demo_object.depth_m
        )
    return depth


class _SequenceScene:
    """Everything seeded once per (config, sequence); renders one sample per frame."""

    def __init__(self, config: str, sequence_index: int, seed: int) -> None:
        self.sequence = sequence_name(sequence_index)
        self.spec = FRAME_SPECS[config]
        self.rng = _rng(seed, config, sequence_index)
        self.objects = _objects(self.rng, self.spec)
        self.background = _background(self.rng, self.spec)
        self.start_ns = int(self.rng.integers(10**9, 10**12))
        self.yaw_rate = float(self.rng.uniform(-0.05, 0.05))
        self.speed = self.rng.uniform(-0.02, 0.02, size=3)
        self.wall_m = float(self.rng.uniform(3.0, 6.0))

    def sample(self, frame: int) -> dict[str, bytes]:
        boxes = [demo_object.bbox(frame, self.spec) for demo_object in self.objects]
        noise = self.rng.normal(0.0, 4.0, size=(self.spec.height, self.spec.width, 3))
        truth = {
            "sequence": self.sequence,
            "frame": frame,
            "timestamp_ns": self.start_ns + frame * FRAME_INTERVAL_NS,
            "objects": [{"category": o.category, "bbox2d": box} for o, box in zip(self.objects, boxes)],
        }
        if self.spec.tensor == "depth":
            tensor = _depth(boxes, self.objects, self.spec, self.wall_m)
        else:
            tensor = _pose(frame, self.yaw_rate, self.speed)
        return {
            "jpg": _encode_jpeg(_frame_pixels(self.background, boxes, self.objects, noise)),
            "json": json.dumps(truth, sort_keys=True).encode("utf-8"),
            "npy": _encode_npy(tensor),
        }


def _write_sequence(folder: Path, config: str, sequence_index: int, seed: int,
                    shards_per_sequence: int, samples_per_shard: int) -> None:
    scene = _SequenceScene(config, sequence_index, seed)
    with atomic_folder(folder / config / scene.sequence) as staging:
        with ShardWriter(staging, max_samples=samples_per_shard) as writer:
            for frame in range(shards_per_sequence * samples_per_shard):
                writer.write(sample_key(scene.sequence, frame), scene.sample(frame))


def _expected_files(folder: Path, sequences: int, shards_per_sequence: int) -> list[tuple[str, str, str, Path]]:
    return [
        (config, sequence_name(index), name, folder / config / sequence_name(index) / name)
        for config in CONFIGS
        for index in range(sequences)
        for name in (f"shards-{shard:04d}.tar" for shard in range(shards_per_sequence))
    ]


def _arguments(sequences: int, shards_per_sequence: int, samples_per_shard: int, seed: int) -> dict[str, int]:
    return {
        "generator_version": GENERATOR_VERSION,
        "sequences": sequences,
        "shards_per_sequence": shards_per_sequence,
        "samples_per_shard": samples_per_shard,
        "seed": seed,
    }


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _demo_file(config: str, sequence: str, filename: str, path: Path) -> DemoFile:
    digest = digest_file(path)
    return DemoFile(config, sequence, filename, path, digest.size, digest.sha1)


def _record_entry(demo_file: DemoFile) -> dict[str, Any]:
    return {"config": demo_file.config, "sequence": demo_file.sequence, "filename": demo_file.filename,
            "size": demo_file.size, "sha1": demo_file.sha1}


def _files_from_record(folder: Path, record: dict[str, Any], arguments: dict[str, int]) -> list[DemoFile] | None:
    """The recorded files if the record was made with `arguments` and every file still matches it."""
    if record.get("arguments") != arguments:
        return None
    expected = _expected_files(folder, arguments["sequences"], arguments["shards_per_sequence"])
    recorded = record.get("files")
    if not isinstance(recorded, list) or len(recorded) != len(expected):
        return None
    files = []
    for (config, sequence, filename, path), entry in zip(expected, recorded):
        if not path.is_file():
            return None
        demo_file = _demo_file(config, sequence, filename, path)
        if entry != _record_entry(demo_file):
            return None
        files.append(demo_file)
    return files


def _prune_stale_sequences(folder: Path, sequences: int) -> None:
    """Remove `seq_*` folders a previous, larger generation left behind."""
    keep = {sequence_name(index) for index in range(sequences)}
    for config in CONFIGS:
        for stale in sorted((folder / config).glob("seq_*")):
            if stale.is_dir() and stale.name not in keep:
                shutil.rmtree(stale)


def _check_arguments(sequences: int, shards_per_sequence: int, samples_per_shard: int, seed: int) -> None:
    counts = (("sequences", sequences), ("shards_per_sequence", shards_per_sequence),
              ("samples_per_shard", samples_per_shard))
    for name, value in counts:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def generate_demo_source(
    folder: Path,
    sequences: int = 8,
    shards_per_sequence: int = 2,
    samples_per_shard: int = 4,
    seed: int = 0,
) -> list[DemoFile]:
    """Write the demo dataset below `folder` (or keep it, if it already matches) and list its files.

    Files are ordered by config, sequence, file name. Each sequence folder is published
    atomically, and `source.json` is written last, so an interrupted run is simply redone.
    """
    _check_arguments(sequences, shards_per_sequence, samples_per_shard, seed)
    arguments = _arguments(sequences, shards_per_sequence, samples_per_shard, seed)
    record = _read_record(folder)
    if record is not None:
        existing = _files_from_record(folder, record, arguments)
        if existing is not None:
            return existing
    (folder / SOURCE_FILE).unlink(missing_ok=True)
    for config in CONFIGS:
        for index in range(sequences):
            _write_sequence(folder, config, index, seed, shards_per_sequence, samples_per_shard)
    _prune_stale_sequences(folder, sequences)
    files = [_demo_file(*expected) for expected in _expected_files(folder, sequences, shards_per_sequence)]
    record = {"arguments": arguments, "files": [_record_entry(demo_file) for demo_file in files]}
    write_bytes_atomic(folder / SOURCE_FILE, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return files
