"""`dataset-assets download`: ATEK flags and outputs, run in-process and as a killed or interrupted subprocess."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from dataset_assets.cli import main
from dataset_assets.core.manifest import MAX_MANIFEST_BYTES, UrlManifest, parse_manifest
from dataset_assets.core.s3 import MIN_PART_SIZE
from dataset_assets.core.s3_resume import RECORD_SUFFIX
from dataset_assets.core.splits import split_sequences
from dataset_assets.demo.generate import DemoFile
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests import s3_fixtures
from dataset_assets_tests.cli_interrupt import interrupt_cli, wait_until
from dataset_assets_tests.demo import fixtures
from dataset_assets_tests.plain_server import PlainServer
from dataset_assets_tests.s3_fixtures import S3Bucket
from dataset_assets_tests.silent_listener import connecting_to, server_that_never_accepts

demo_source = fixtures.demo_source
demo_files = fixtures.demo_files
demo_server = fixtures.demo_server
moto_endpoint = s3_fixtures.moto_endpoint
moto_client = s3_fixtures.moto_client
s3_bucket = s3_fixtures.s3_bucket

CONFIG = "efm"


def save_manifest(server: DemoServer, folder: Path) -> tuple[Path, UrlManifest]:
    response = httpx.get(server.manifest_url)
    path = folder / "manifest.json"
    path.write_bytes(response.content)
    return path, parse_manifest(response.json(), str(path))


def download_args(manifest_path: Path | str, out: Path, *extra: str) -> list[str]:
    return ["download", "--config-name", CONFIG, "--input-json-path", str(manifest_path),
            "--output-folder-path", str(out), *extra]


def one_file_manifest(data: bytes, url: str) -> bytes:
    """A manifest of one file, seq_000/shards-0000.tar, holding `data` and served at `url`."""
    entry = {"filename": "shards-0000.tar", "sha1sum": hashlib.sha1(data).hexdigest(), "file_size_bytes": len(data),
             "download_url": url}
    return json.dumps({"atek_data_for_all_configs": {CONFIG: {"wds_file_urls": {"seq_000": {
        "shards-0000_tar": entry}}}}}).encode()


def read_tars(path: Path) -> dict[str, list[str]]:
    return yaml.safe_load(path.read_text())["tars"]


def config_files(demo_files: list[DemoFile]) -> list[DemoFile]:
    return [demo_file for demo_file in demo_files if demo_file.config == CONFIG]


def test_without_download_writes_streamable_yamls_of_the_seeded_split(demo_server: DemoServer, tmp_path: Path
                                                                      ) -> None:
    manifest_path, manifest = save_manifest(demo_server, tmp_path)

    assert main(download_args(manifest_path, tmp_path / "out", "--train-val-split-ratio", "0.75")) == 0

    split = split_sequences(manifest.sequences(CONFIG), 0.75, 42)
    train = read_tars(tmp_path / "out" / "streamable_train_tars.yaml")
    assert list(train) == sorted(split.train)
    assert train[split.train[0]] == [entry.url for entry in manifest.entries(CONFIG, split.train[0])]
    assert set(read_tars(tmp_path / "out" / "streamable_all_tars.yaml")) == set(split.all)
    assert demo_server.stats.body_bytes_sent() == 0


def test_download_writes_verified_files_and_local_yamls_with_relative_paths(
    demo_server: DemoServer, demo_files: list[DemoFile], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest_path, manifest = save_manifest(demo_server, tmp_path)
    out = tmp_path / "out"

    assert main(download_args(manifest_path, out, "--download-wds-to-local", "--workers", "4")) == 0

    split = split_sequences(manifest.sequences(CONFIG))
    assert read_tars(out / "local_validation_tars.yaml") == {
        seq: [f"{seq}/shards-0000.tar", f"{seq}/shards-0001.tar"] for seq in split.validation}
    assert set(read_tars(out / "local_all_tars.yaml")) == set(manifest.sequences(CONFIG))
    for demo_file in config_files(demo_files):
        assert hashlib.sha1((out / demo_file.sequence / demo_file.filename).read_bytes()).hexdigest() == demo_file.sha1
    assert "16 file(s): 16 downloaded, 0 resumed, 0 skipped, 0 failed" in capsys.readouterr().out


def test_split_json_applies_to_the_first_k_shuffled_sequences(demo_server: DemoServer, tmp_path: Path) -> None:
    manifest_path, manifest = save_manifest(demo_server, tmp_path)
    kept = split_sequences(manifest.sequences(CONFIG), 1.0, 7, 3).all
    split_json = tmp_path / "split.json"
    split_json.write_text(json.dumps({"train_sequences": [kept[0], "seq_999"], "val_sequences": list(kept[1:])}))

    code = main(download_args(manifest_path, tmp_path / "out", "--download-wds-to-local", "--random-seed", "7",
                              "--max-num-sequences", "3", "--train-val-split-json-path", str(split_json)))

    assert code == 0
    assert list(read_tars(tmp_path / "out" / "local_train_tars.yaml")) == [kept[0]]
    assert sorted(read_tars(tmp_path / "out" / "local_validation_tars.yaml")) == sorted(kept[1:])
    assert sorted(path.name for path in (tmp_path / "out").iterdir() if path.is_dir()) == sorted(kept)


def test_failures_are_summarised_redacted_and_exit_non_zero(
    demo_server: DemoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    manifest_path, manifest = save_manifest(demo_server, tmp_path)
    signatures = {parse_qs(urlsplit(e.url).query)["Signature"][0] for e in manifest.all_entries()}
    demo_server.faults.fail_with_status(403, times=100, path_contains="efm/seq_003")
    demo_server.faults.fail_with_status(500, times=3)
    out = tmp_path / "out"

    code = main(download_args(manifest_path, out, "--download-wds-to-local"))

    captured = capsys.readouterr()
    assert code == 1
    assert "14 downloaded, 0 resumed, 0 skipped, 2 failed" in captured.out
    assert "failed efm/seq_003/shards-0000.tar: signed links expired" in captured.out
    assert read_tars(out / "local_all_tars.yaml")["seq_003"] == []
    yamls = [path.read_text() for path in out.glob("local_*_tars.yaml")]
    for text in [captured.out, captured.err, caplog.text, *yamls]:
        assert "Signature=" not in text
        assert not any(signature in text for signature in signatures)


def test_expired_links_of_a_manifest_url_are_refreshed_from_that_url(demo_server: DemoServer, tmp_path: Path) -> None:
    demo_server.faults.fail_with_status(403, times=1, path_contains="efm/seq_002/shards-0001")

    assert main(download_args(demo_server.manifest_url, tmp_path / "out", "--download-wds-to-local")) == 0

    assert [r.path for r in demo_server.stats.requests].count("/manifest.json") == 2


def test_bad_input_exits_2_naming_the_field(demo_server: DemoServer, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    manifest_path, _ = save_manifest(demo_server, tmp_path)

    unknown = main(["download", "--config-name", "nope", "--input-json-path", str(manifest_path),
                    "--output-folder-path", str(tmp_path / "out")])
    no_download = main(download_args(manifest_path, tmp_path / "out", "--destination", "s3://bucket/x"))

    err = capsys.readouterr().err
    assert (unknown, no_download) == (2, 2)
    assert "field 'atek_data_for_all_configs.nope' is not published" in err
    assert "field '--destination' needs --download-wds-to-local" in err


def test_destination_s3_streams_files_and_puts_the_yamls_beside_them(
    demo_server: DemoServer, demo_files: list[DemoFile], tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    manifest_path, _ = save_manifest(demo_server, tmp_path)

    code = main(download_args(manifest_path, tmp_path / "out", "--download-wds-to-local", "--destination",
                              f"s3://{s3_bucket.name}/atek", "--s3-endpoint-url", s3_bucket.endpoint_url))

    assert code == 0
    demo_file = config_files(demo_files)[0]
    assert s3_bucket.read(f"atek/{demo_file.sequence}/{demo_file.filename}") == demo_file.path.read_bytes()
    assert yaml.safe_load(s3_bucket.read("atek/local_all_tars.yaml")) == yaml.safe_load(
        (tmp_path / "out" / "local_all_tars.yaml").read_text())
    assert len(s3_bucket.keys()) == len(config_files(demo_files)) + 3


def test_split_yamls_the_bucket_refuses_are_reported_after_the_summary_naming_the_key_and_exit_1(
    demo_server: DemoServer, demo_files: list[DemoFile], tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    """The bucket's policy denies PutObject on YAML keys under the prefix (moto enforces a bucket policy's
    Deny), so every shard uploads and then the first YAML put is refused with a 403, as a real bucket would."""
    manifest_path, _ = save_manifest(demo_server, tmp_path)
    deny = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                                                    "Resource": f"arn:aws:s3:::{s3_bucket.name}/atek/*.yaml"}]}
    s3_bucket.client.put_bucket_policy(Bucket=s3_bucket.name, Policy=json.dumps(deny))
    secrets = {"AWS_SECRET_ACCESS_KEY": "sEcReT-aCcEsS-kEy-0123", "AWS_SESSION_TOKEN": "sEsSiOn-ToKeN-4567"}
    args = download_args(manifest_path, tmp_path / "out", "--download-wds-to-local", "--destination",
                         f"s3://{s3_bucket.name}/atek", "--s3-endpoint-url", s3_bucket.endpoint_url)

    # One stream for both, as a terminal or `2>&1` shows them: the summary must come first.
    result = subprocess.run([sys.executable, "-m", "dataset_assets.cli", *args], env={**os.environ, **secrets},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)

    output = result.stdout
    assert result.returncode == 1, output
    summary = output.index("16 file(s): 16 downloaded, 0 resumed, 0 skipped, 0 failed")
    refused = re.search(rf"error: s3://{s3_bucket.name}/atek/local_(train|validation|all)_tars\.yaml: "
                        r"S3 put_object failed: An error occurred \(403\)", output)
    assert refused and summary < refused.start(), output
    assert "Traceback" not in output
    assert not any(secret in output for secret in secrets.values())
    shards = {f"atek/{f.sequence}/{f.filename}" for f in config_files(demo_files)}
    assert set(s3_bucket.keys()) == shards
    assert set(read_tars(tmp_path / "out" / "local_all_tars.yaml")) == {f.sequence for f in config_files(demo_files)}


def test_kill_9_mid_run_then_rerun_fetches_only_what_was_missing(
    demo_source: Path, demo_files: list[DemoFile], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with DemoServer(demo_source, secret=b"kill-9") as first:
        manifest_path, _ = save_manifest(first, tmp_path)
        first.faults.trickle(40_000)
        process = subprocess.Popen([sys.executable, "-m", "dataset_assets.cli",
                                    *download_args(manifest_path, out, "--download-wds-to-local")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not list(out.glob("*/*.tar")) and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.02)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait()
        port = urlsplit(first.base_url).port
    files = config_files(demo_files)
    complete = [f for f in files if (out / f.sequence / f.filename).exists()]
    held = sum(path.stat().st_size for path in out.glob("*/*.tar.part"))
    assert complete and held and len(complete) < len(files)

    # A fresh server on the same port and secret: the saved links stay valid, its counters start at zero.
    with DemoServer(demo_source, secret=b"kill-9", port=port or 0) as second:
        assert main(download_args(manifest_path, out, "--download-wds-to-local")) == 0

    missing = sum(f.size for f in files) - sum(f.size for f in complete) - held
    assert second.stats.body_bytes_sent() == missing
    fetched = {r.path for r in second.stats.requests}
    assert not any(f"/files/{CONFIG}/{f.sequence}/{f.filename}" in fetched for f in complete)
    for demo_file in files:
        assert hashlib.sha1((out / demo_file.sequence / demo_file.filename).read_bytes()).hexdigest() == demo_file.sha1
    assert not list(out.glob("*/*.part*"))


def test_kill_9_mid_upload_to_s3_then_rerun_continues_the_upload_fetching_only_the_rest(
    tmp_path: Path, s3_bucket: S3Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    """S3 cannot give back the parts of an incomplete upload, so the rerun goes on from the upload's record:
    its parts, and the hashing state after them."""
    source = tmp_path / "source"
    data = hashlib.shake_256(b"kill-9 to s3").digest(4 * MIN_PART_SIZE + 12_345)
    (source / CONFIG / "seq_000").mkdir(parents=True)
    (source / CONFIG / "seq_000" / "shards-0000.tar").write_bytes(data)
    key = "atek/seq_000/shards-0000.tar"
    out = tmp_path / "out"

    with DemoServer(source, secret=b"kill-9-s3") as first:
        manifest_path, _ = save_manifest(first, tmp_path)
        args = download_args(manifest_path, out, "--download-wds-to-local", "--destination",
                             f"s3://{s3_bucket.name}/atek", "--s3-endpoint-url", s3_bucket.endpoint_url,
                             "--part-size-mib", "5", "--part-concurrency", "2")
        first.faults.trickle(4 * MIN_PART_SIZE)  # about a second for the file
        process = subprocess.Popen([sys.executable, "-m", "dataset_assets.cli", *args],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: s3_bucket.recorded_bytes(key) >= 2 * MIN_PART_SIZE, process,
                       "a record of two uploaded parts")
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait()
        port = urlsplit(first.base_url).port
    left = s3_bucket.upload_record(key)
    assert left is not None and [upload["UploadId"] for upload in s3_bucket.multipart_uploads()] == [left.upload_id]
    assert key not in s3_bucket.keys()

    with DemoServer(source, secret=b"kill-9-s3", port=port or 0) as second:
        assert main(args) == 0

    assert "1 file(s): 0 downloaded, 1 resumed, 0 skipped, 0 failed" in capsys.readouterr().out
    assert [r.range_header for r in second.stats.requests if r.path.startswith("/files/")] == [
        f"bytes={left.held}-"]
    assert second.stats.body_bytes_sent() == len(data) - left.held
    assert s3_bucket.read(key) == data
    assert s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)["Metadata"]["sha1"] == hashlib.sha1(
        data).hexdigest()
    assert s3_bucket.multipart_uploads() == [] and key + RECORD_SUFFIX not in s3_bucket.keys()


def test_a_missing_manifest_file_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-manifest.json"

    code = main(download_args(missing, tmp_path / "out"))

    assert code == 2
    assert f"error: {missing}: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_manifest_file_over_the_size_limit_exits_2_naming_its_size_and_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cap on a manifest fetched over http(s) holds for a local file too, checked before reading it."""
    huge = tmp_path / "huge-manifest.json"
    with huge.open("wb") as handle:
        handle.write(b'{"atek_data_for_all_configs": {}}')
        handle.truncate(MAX_MANIFEST_BYTES + 1)  # a hole: the file takes a few KiB on disk

    code = main(download_args(huge, tmp_path / "out"))

    assert code == 2
    error = capsys.readouterr().err
    assert f"error: {huge}: " in error
    assert f"larger than the {MAX_MANIFEST_BYTES}-byte limit" in error and f"{MAX_MANIFEST_BYTES + 1} bytes" in error
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_created_exits_2_naming_it(
    demo_server: DemoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest_path, _ = save_manifest(demo_server, tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "out"

    code = main(download_args(manifest_path, out, "--download-wds-to-local"))

    assert code == 2
    assert "field '--output-folder-path' cannot be created" in capsys.readouterr().err
    assert demo_server.stats.body_bytes_sent() == 0


def test_a_garbled_split_yaml_left_in_the_output_folder_is_replaced(demo_server: DemoServer, tmp_path: Path) -> None:
    manifest_path, manifest = save_manifest(demo_server, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "streamable_train_tars.yaml").write_bytes(b"tars:\n  seq_000: [\xff\xfe]\n")

    assert main(download_args(manifest_path, out)) == 0

    split = split_sequences(manifest.sequences(CONFIG))
    assert sorted(read_tars(out / "streamable_train_tars.yaml")) == sorted(split.train)


@pytest.mark.parametrize(("flag", "value"), [("--train-val-split-ratio", "1.5"), ("--train-val-split-ratio", "nan"),
                                             ("--part-size-mib", "1"), ("--part-concurrency", "0"),
                                             ("--destination", "s3://")])
def test_a_bad_flag_value_exits_2_naming_the_flag(demo_server: DemoServer, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    manifest_path, _ = save_manifest(demo_server, tmp_path)

    code = main(download_args(manifest_path, tmp_path / "out", "--download-wds-to-local", "--destination",
                              "s3://bucket/atek", flag, value))

    assert code == 2
    assert f"error: command line: field '{flag}' " in capsys.readouterr().err
    assert demo_server.stats.body_bytes_sent() == 0


def test_an_unusable_s3_endpoint_exits_2_naming_it(demo_server: DemoServer, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    manifest_path, _ = save_manifest(demo_server, tmp_path)

    code = main(download_args(manifest_path, tmp_path / "out", "--download-wds-to-local", "--destination",
                              "s3://bucket/atek", "--s3-endpoint-url", "http://bad host"))

    assert code == 2
    err = capsys.readouterr().err
    assert "field 'endpoint_url' is not a usable S3 endpoint (Invalid endpoint: http://bad host)" in err
    assert demo_server.stats.body_bytes_sent() == 0


def test_ctrl_c_stops_promptly_summarises_exits_130_and_a_rerun_fetches_only_the_missing_bytes(
    demo_server: DemoServer, demo_files: list[DemoFile], tmp_path: Path
) -> None:
    manifest_path, manifest = save_manifest(demo_server, tmp_path)
    first, waiting = manifest.entries(CONFIG, split_sequences(manifest.sequences(CONFIG)).all[0])
    # One file streams slowly, the other sleeps in a 30 s Retry-After backoff: Ctrl-C must end both at once.
    demo_server.faults.trickle(10_000)
    demo_server.faults.fail_with_status(503, times=100, retry_after=30, path_contains=f"/{waiting.relative_path}")
    out = tmp_path / "out"

    ended = interrupt_cli(download_args(manifest_path, out, "--download-wds-to-local", "--workers", "2"), [
        (lambda: any(r.status == 503 for r in demo_server.stats.requests), "503 answered"),
        (lambda: any(p.stat().st_size for p in out.glob("*/*.tar.part")), "bytes held")])

    assert ended.seconds_to_exit < 10  # not the 30 s Retry-After: a loaded machine has margin
    assert ended.returncode == 130, ended.stderr
    assert "Traceback" not in ended.stderr
    summary = re.search(r"16 file\(s\): (\d+) downloaded, 0 resumed, 0 skipped, 0 failed, (\d+) interrupted",
                        ended.stdout)
    assert summary, ended.stdout
    files = config_files(demo_files)
    complete = [f for f in files if (out / f.sequence / f.filename).exists()]
    assert int(summary[1]) == len(complete) and int(summary[2]) == len(files) - len(complete)
    assert "interrupted: run the same command again to resume" in ended.stdout
    assert not list(out.glob("*.yaml")) and not list(out.glob(".*"))
    held = sum(path.stat().st_size for path in out.glob("*/*.tar.part"))
    assert held

    demo_server.faults.clear()
    demo_server.stats.reset()
    assert main(download_args(manifest_path, out, "--download-wds-to-local")) == 0

    assert demo_server.stats.body_bytes_sent() == sum(f.size for f in files if f not in complete) - held
    for demo_file in files:
        assert hashlib.sha1((out / demo_file.sequence / demo_file.filename).read_bytes()).hexdigest() == demo_file.sha1
    assert set(read_tars(out / "local_all_tars.yaml")) == set(manifest.sequences(CONFIG))


def test_ctrl_c_while_the_manifest_is_fetched_exits_130_without_a_traceback(
    demo_server: DemoServer, tmp_path: Path
) -> None:
    demo_server.faults.trickle(1_000, path_contains="/manifest.json")
    out = tmp_path / "out"

    ended = interrupt_cli(download_args(demo_server.manifest_url, out, "--download-wds-to-local"), [
        (lambda: demo_server.stats.body_bytes_sent("/manifest.json") > 0, "manifest bytes sent")])

    assert ended.returncode == 130, ended.stderr
    assert "Traceback" not in ended.stderr and "interrupted: run the same command again to resume" in ended.stderr
    assert not out.exists()


def test_ctrl_c_while_a_server_is_silent_mid_body_exits_130_at_once_and_a_rerun_fetches_only_the_rest(
    plain_server: PlainServer, tmp_path: Path
) -> None:
    """The silent server holds the read until the 60 s read timeout unless the stop ends it."""
    path, data, cut = "/seq_000/shards-0000.tar", os.urandom(300_000), 100_000
    plain_server.serve(path, data)
    plain_server.stall_after(path, cut)
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_bytes(one_file_manifest(data, plain_server.url(path)))
    out = tmp_path / "out"
    part = out / "seq_000" / "shards-0000.tar.part"

    ended = interrupt_cli(download_args(manifest_path, out, "--download-wds-to-local"), [
        (lambda: part.exists() and part.stat().st_size == cut, "the bytes before the silence held")])

    assert ended.seconds_to_exit < 10  # not the 60 s read timeout: a loaded machine has margin
    assert ended.returncode == 130, ended.stderr
    assert "Traceback" not in ended.stderr
    assert "0 failed, 1 interrupted" in ended.stdout
    assert part.read_bytes() == data[:cut]

    assert main(download_args(manifest_path, out, "--download-wds-to-local")) == 0

    assert (out / "seq_000" / "shards-0000.tar").read_bytes() == data
    assert plain_server.body_bytes_sent(path) == len(data)
    assert plain_server.requests[-1].range_header == f"bytes={cut}-"


def test_ctrl_c_while_a_server_never_answers_the_request_exits_130_at_once_and_a_rerun_completes(
    plain_server: PlainServer, tmp_path: Path
) -> None:
    """The server reads the request and sends no status line: the stop ends the wait for the response's headers,
    which would otherwise last the 60 s read timeout."""
    path, data = "/seq_000/shards-0000.tar", os.urandom(10_000)
    plain_server.serve(path, data)
    plain_server.never_answer(path)
    manifest_path, out = tmp_path / "manifest.json", tmp_path / "out"
    manifest_path.write_bytes(one_file_manifest(data, plain_server.url(path)))

    ended = interrupt_cli(download_args(manifest_path, out, "--download-wds-to-local"),
                          [(lambda: plain_server.unanswered == [path], "the request held by the server")])

    assert ended.seconds_to_exit < 10  # not the 60 s read timeout: a loaded machine has margin
    assert ended.returncode == 130, ended.stderr
    assert "Traceback" not in ended.stderr and "quitting now" not in ended.stderr
    assert "0 failed, 1 interrupted" in ended.stdout

    assert main(download_args(manifest_path, out, "--download-wds-to-local")) == 0
    assert (out / "seq_000" / "shards-0000.tar").read_bytes() == data


def test_ctrl_c_while_a_connect_hangs_exits_130_at_once_and_a_rerun_completes(
    plain_server: PlainServer, tmp_path: Path
) -> None:
    """The host drops the SYN: the stop ends the connect, which would otherwise last the 60 s connect timeout."""
    path, data = "/seq_000/shards-0000.tar", os.urandom(10_000)
    manifest_path, out = tmp_path / "manifest.json", tmp_path / "out"
    with server_that_never_accepts() as port:
        manifest_path.write_bytes(one_file_manifest(data, f"http://127.0.0.1:{port}{path}"))
        ended = interrupt_cli(download_args(manifest_path, out, "--download-wds-to-local"),
                              [(lambda: connecting_to(port), "a connect to the full listener")])

    assert ended.seconds_to_exit < 10  # not the 60 s connect timeout: a loaded machine has margin
    assert ended.returncode == 130, ended.stderr
    assert "Traceback" not in ended.stderr and "quitting now" not in ended.stderr
    assert "0 failed, 1 interrupted" in ended.stdout

    plain_server.serve(path, data)
    manifest_path.write_bytes(one_file_manifest(data, plain_server.url(path)))
    assert main(download_args(manifest_path, out, "--download-wds-to-local")) == 0
    assert (out / "seq_000" / "shards-0000.tar").read_bytes() == data


def test_a_second_ctrl_c_quits_at_once_while_an_s3_call_hangs_on_connect(
    plain_server: PlainServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3's connects cannot be ended from Python: the orderly stop would wait for botocore's connect timeouts
    and retries; a second Ctrl-C does not."""
    for name, value in s3_fixtures.DUMMY_AWS_ENV.items():  # boto3 signs, then connects
        monkeypatch.setenv(name, value)
    path, data = "/seq_000/shards-0000.tar", os.urandom(10_000)
    plain_server.serve(path, data)
    manifest_path, out = tmp_path / "manifest.json", tmp_path / "out"
    manifest_path.write_bytes(one_file_manifest(data, plain_server.url(path)))
    with server_that_never_accepts() as port:
        ended = interrupt_cli(download_args(manifest_path, out, "--download-wds-to-local", "--destination",
                                            "s3://bucket/atek", "--s3-endpoint-url", f"http://127.0.0.1:{port}"),
                              [(lambda: connecting_to(port), "a connect to the full listener")],
                              again_after="Ctrl-C again quits at once")

    assert ended.seconds_to_exit < 10
    assert ended.returncode == 130, ended.stderr
    assert "quitting now; run the same command again to resume" in ended.stderr
    assert "Traceback" not in ended.stderr


def test_ctrl_c_while_fresh_links_are_fetched_from_a_silent_manifest_server_exits_130_at_once(
    plain_server: PlainServer, tmp_path: Path
) -> None:
    """The file's signed link is refused, so the manifest is fetched again, and that answer stalls mid-body."""
    path, data = "/seq_000/shards-0000.tar?Signature=abcdef", os.urandom(10_000)
    plain_server.serve(path, data)
    plain_server.fail(path, 403)
    plain_server.serve("/manifest.json", one_file_manifest(data, plain_server.url(path)))
    plain_server.stall_after("/manifest.json", 10, after_requests=1)
    out = tmp_path / "out"

    ended = interrupt_cli(download_args(plain_server.url("/manifest.json"), out, "--download-wds-to-local"), [
        (lambda: [r.path for r in plain_server.requests].count("/manifest.json") == 2, "the manifest asked again")])

    assert ended.seconds_to_exit < 10  # not the 60 s read timeout: a loaded machine has margin
    assert ended.returncode == 130, ended.stderr
    assert "Traceback" not in ended.stderr
    assert "0 failed, 1 interrupted" in ended.stdout
    assert [(r.path, r.status) for r in plain_server.requests] == [
        ("/manifest.json", 200), (path, 403), ("/manifest.json", 200)]
