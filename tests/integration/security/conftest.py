"""Security material for the security tests: the project's own pki.sh into a temporary directory."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> pathlib.Path:
    """CA, server and client certificates, role tokens and the token file, as `make run` makes them."""
    run_dir = tmp_path_factory.mktemp("sec-run")
    subprocess.run([str(ROOT / "deploy/local/pki.sh"), "ensure"], check=True, capture_output=True,
                   env={**os.environ, "MF_RUN_DIR": str(run_dir)})
    return run_dir / "pki"


def token(pki: pathlib.Path, role: str) -> str:
    return (pki / f"token.{role}").read_text().strip()
