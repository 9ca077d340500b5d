"""Bad input to the CLI ends in one line on stderr and a non-zero exit code, never a traceback,
and is refused before any work (issue 15's smaller defects)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli.models import register
from pipeline.kafka.broker import free_port

TSAD = str(Path(sys.executable).parent / "tsad")
BAD_NAMES = ["../../etc", "..", "/etc", ".hidden", "a/b"]


@pytest.fixture()
def app():
    app = typer.Typer()
    register(app)
    return app


def one_line_error(result) -> str:
    assert not isinstance(result.exception, (Exception,)) or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_model_names_are_refused_with_exit_code_2_before_any_work(app, tmp_path, name):
    runner = CliRunner()
    data = tmp_path / "missing-is-fine-for-the-name-check.csv"
    data.write_text("timestamp,value\n")  # train must refuse the name before reading or training
    for args in (
        ["train", str(data), "--registry", str(tmp_path / "reg"), "--name", name, "--epochs", "1"],
        ["models", "promote", name, "1", "--registry", str(tmp_path / "reg")],
        ["models", "rollback", name, "--registry", str(tmp_path / "reg")],
        ["models", "list", name, "--registry", str(tmp_path / "reg")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "invalid model name" in one_line_error(result)
    assert not (tmp_path / "reg").exists() and not Path("/etc/v0001").exists()


def test_a_champion_pointer_holding_a_list_is_a_clean_error(app, tmp_path):
    from delivery_helpers import make_registry

    make_registry(tmp_path)
    (tmp_path / "m" / "champion.json").write_text(json.dumps([1, 2]))
    for args in (["models", "promote", "m", "1"], ["models", "rollback", "m"], ["models", "list", "m"]):
        result = CliRunner().invoke(app, [*args, "--registry", str(tmp_path)])
        assert result.exit_code == 1, (args, result.output)
        assert "not a JSON object" in one_line_error(result)


def test_promoting_an_unknown_model_leaves_no_directory(app, tmp_path):
    result = CliRunner().invoke(app, ["models", "promote", "nosuchmodel", "1", "--registry", str(tmp_path)])
    assert result.exit_code == 1 and "no model named 'nosuchmodel'" in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_a_metrics_port_in_use_names_the_port_and_the_flag(tmp_path):
    from delivery_helpers import make_registry

    make_registry(tmp_path / "reg")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [
                TSAD,
                "serve",
                "--registry",
                str(tmp_path / "reg"),
                "--model",
                "m",
                "--metrics-port",
                str(port),
                "--bootstrap-servers",
                f"127.0.0.1:{free_port()}",
                "--log-level",
                "ERROR",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "--metrics-port" in lines[0], proc.stderr


def test_publish_to_an_unreachable_broker_gives_up_after_its_timeout_with_one_line(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("timestamp,value\n2024-01-01 00:00:00,1.0\n2024-01-01 00:05:00,2.0\n")
    proc = subprocess.run(
        [TSAD, "publish", str(csv), "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "2 of 2 events not acknowledged" in lines[0], (
        proc.stderr
    )
