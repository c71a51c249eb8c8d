"""Rendered systemd units: real paths, the settings the issue asks for, and
``systemd-analyze verify`` (systemd 252) accepting every file without a word."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from consumers.systemd import (
    ENV_FILE,
    NATS_UNIT,
    WORKER_UNIT,
    UnitOptions,
    protect_home,
    render_units,
    write_units,
)

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ANALYZE, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )


def instance(out: Path, name: str = "main") -> Path:
    """The template as an instance file (verify checks instances, with %i filled in)."""
    path = out / WORKER_UNIT.replace("@", f"@{name}")
    shutil.copy(out / WORKER_UNIT, path)
    return path


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_every_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Both units (the template through an instance) verify with exit 0 and no warning, and
    the same check fails a unit whose ExecStart names a file that does not exist."""
    write_units(tmp_path, UnitOptions(venv=str(VENV)))
    nats, worker = tmp_path / NATS_UNIT, instance(tmp_path)
    ok = verify(nats, worker)
    assert (ok.returncode, ok.stdout + ok.stderr) == (0, "")
    broken = tmp_path / "broken@main.service"
    broken.write_text(worker.read_text().replace(str(VENV / "bin"), "/nonexistent/bin"))
    bad = verify(broken)
    assert bad.returncode != 0 and "/nonexistent/bin/eventstore" in bad.stderr


def test_units_run_the_real_binaries_with_notify_watchdog_and_hardening(tmp_path: Path) -> None:
    """ExecStart points at this venv's eventstore and nats-server; the worker is Type=notify
    with a watchdog, restarted on failure, after and wanting the NATS unit, logging to the
    journal, hardened, writing only its database directory."""
    files = render_units(UnitOptions(venv=str(VENV), user="agents"))
    assert sorted(files) == sorted([NATS_UNIT, WORKER_UNIT, ENV_FILE])
    worker, nats = settings(files[WORKER_UNIT]), settings(files[NATS_UNIT])
    exec_start = worker["ExecStart"][0].split()
    assert Path(exec_start[0]) == VENV / "bin" / "eventstore" and exec_start[1] == "worker"
    assert "/etc/eventstore/%i.toml" in exec_start and "/var/lib/eventstore/db/%i.db" in exec_start
    nats_start = nats["ExecStart"][0].split()
    assert Path(nats_start[0]).is_file() and Path(nats_start[2]).is_file()  # binary, nats.conf
    assert nats_start[3:] == ["-sd", "/var/lib/eventstore/nats"]
    for key, value in {
        "Type": "notify", "WatchdogSec": "60", "Restart": "on-failure", "TimeoutStopSec": "90",
        "User": "agents", "StandardOutput": "journal", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "PrivateTmp": "yes", "ReadWritePaths": "/var/lib/eventstore/db",
        "EnvironmentFile": "/etc/eventstore/eventstore.env",
    }.items():  # fmt: skip
        assert worker[key] == [value], key
    assert worker["After"] == worker["Wants"] == ["network-online.target nats-server.service"]
    assert nats["ReadWritePaths"] == ["/var/lib/eventstore/nats"]
    assert nats["ProtectSystem"] == ["strict"] and nats["ProtectHome"] == ["yes"]
    env = settings(files[ENV_FILE])
    assert env["EVENTSTORE_URL"] == ["nats://127.0.0.1:4222"] and env["EVENTSTORE_STREAM"]


def test_code_under_a_home_directory_is_bound_read_only_into_an_empty_home() -> None:
    """ProtectHome=yes, unless the code lives in /home or /root: then only that tree is seen."""
    assert protect_home([Path("/usr/bin/python3"), Path("/opt/venv/bin/eventstore")]) == (
        "ProtectHome=yes"
    )
    text = protect_home([Path("/home/ana/venv/bin/eventstore"), Path("/root/.pyenv/x/python")])
    assert "ProtectHome=tmpfs" in text
    assert "BindReadOnlyPaths=/home/ana/venv /root/.pyenv" in text


def test_cli_render_writes_the_files_and_a_bad_venv_is_one_line(tmp_path: Path) -> None:
    """``eventstore systemd render --out DIR`` writes three files and says where; a --venv
    without eventstore in it is one line on stderr and exit 1, nothing written."""
    cli = [sys.executable, "-m", "consumers.cli", "systemd", "render"]
    out = tmp_path / "units"
    args = ["--out", str(out), "--venv", str(VENV), "--user", "svc", "--stream", "AUDIT"]
    done = subprocess.run([*cli, *args], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([NATS_UNIT, WORKER_UNIT, ENV_FILE])
    assert "User=svc" in (out / WORKER_UNIT).read_text()
    assert "EVENTSTORE_STREAM=AUDIT" in (out / ENV_FILE).read_text()
    empty = tmp_path / "novenv"
    empty.mkdir()
    bad = subprocess.run([*cli, "--out", str(tmp_path / "none"), "--venv", str(empty)],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "no eventstore command" in bad.stderr and not (tmp_path / "none").exists()
