"""`dataset-assets demo ...`, run as the console script runs it."""
from __future__ import annotations

import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_assets.cli import main
from dataset_assets.cli.demo import _demo_secret
from dataset_assets.defs.resources import HOME_ENV


def test_demo_serve_on_a_port_in_use_exits_2_naming_the_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        finished = subprocess.run([sys.executable, "-m", "dataset_assets.cli", "demo", "serve",
                                   "--home", str(tmp_path / "home"), "--port", str(port)],
                                  capture_output=True, text=True, timeout=120)

    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr
    assert f"error: cannot serve the demo source on 127.0.0.1:{port}" in finished.stderr


@pytest.mark.parametrize("command", [["serve", "--port", "70000"], ["run", "--port", "-1"],
                                     ["ui", "--ui-port", "65536"]])
def test_a_port_out_of_range_exits_2_naming_the_flag(tmp_path: Path, command: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", *command, "--home", str(tmp_path / "home")]) == 2

    assert f"error: command line: field '{command[1]}' must be a port number" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", ["serve", "run", "ui"])
def test_a_home_that_cannot_be_created_exits_2_naming_it(
    tmp_path: Path, command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))  # demo commands export these; keep them local
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "unused"))
    (tmp_path / "a-file").write_text("not a folder")
    home = tmp_path / "a-file" / "home"

    assert main(["demo", command, "--home", str(home), "--port", "0"]) == 2

    assert f"error: command line: field '--home' cannot be created (Not a directory) (got '{home}')" in (
        capsys.readouterr().err)


def test_the_demo_secret_is_private_from_before_the_key_is_written(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    modes_when_written: list[int | None] = []  # None: written into a new file, created with the umask's mode
    write_bytes = Path.write_bytes

    def observed_write_bytes(path: Path, data: bytes) -> int:  # a spy: the window it checks has no other witness
        modes_when_written.append(stat.S_IMODE(path.stat().st_mode) if path.exists() else None)
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", observed_write_bytes)
    key = _demo_secret(tmp_path)

    secret = tmp_path / "demo_source" / ".secret"
    assert modes_when_written == [0o600] and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(key) == 32 and _demo_secret(tmp_path) == key
    assert [path.name for path in secret.parent.iterdir()] == [".secret"]
