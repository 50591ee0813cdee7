"""`dataset-assets demo ...`, run as the console script runs it."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


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
