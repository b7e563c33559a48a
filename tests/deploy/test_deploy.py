"""What a user deploys with, checked without a Docker daemon.

The compose file is validated against the Compose Specification's schema and read for
its ports; the compose configuration passes `switchyard check`; the Dockerfile keeps its
promises; the smoke scripts pass against the built binary on the echo backend and fail
on a wrong key; every script answers `--help` without doing anything else.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _binary():
    path = os.environ.get("SWITCHYARD_BIN")
    if not path:
        pytest.fail("$SWITCHYARD_BIN is not set; run the suite through scripts/test")
    return str(Path(path).resolve())


def _compose():
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_compose_file_follows_the_compose_specification():
    validator = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(validator), "--schemafile", str(HERE / "compose-spec.json"),
         str(ROOT / "docker-compose.yaml")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_switchyard_publishes_a_port_and_by_default_on_loopback():
    services = _compose()["services"]
    publishing = sorted(name for name, service in services.items() if service.get("ports"))
    assert publishing == ["switchyard"]
    for port in services["switchyard"]["ports"]:
        assert port.startswith("${SWITCHYARD_BIND:-127.0.0.1}:"), port


def test_profiles_and_the_one_shot_pull():
    services = _compose()["services"]
    assert services["llama-server"]["profiles"] == ["llama"]
    assert services["cloudflared"]["profiles"] == ["tunnel"]
    assert "TUNNEL_TOKEN" in services["cloudflared"]["environment"]
    pull = services["ollama-pull"]
    assert pull["restart"] == "no"
    assert "${OLLAMA_MODEL" in " ".join(pull["entrypoint"])
    for name in ("switchyard", "ollama", "ollama-pull"):
        assert "profiles" not in services[name], f"{name} must start without a profile"


def test_env_example_documents_every_variable_the_compose_file_reads():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "docker-compose.yaml").read_text()))
    documented = set(
        re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE)
    )
    assert used - documented == set(), f"undocumented in .env.example: {used - documented}"


def test_config_and_keys_are_mounted_never_baked_in():
    switchyard = _compose()["services"]["switchyard"]
    mounts = [volume.split(":") for volume in switchyard["volumes"]]
    sources = {source for source, *_ in mounts}
    assert {"./config/compose.toml", "./config/keys.json"} <= sources
    assert all(rest[-1] == "ro" for source, *rest in mounts if source.startswith("./config/"))
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "keys.json" not in re.sub(r"#.*", "", dockerfile)


def test_the_compose_configuration_passes_check():
    keys = ROOT / "config" / "keys.example.json"
    result = subprocess.run(
        [_binary(), "check", "--config", str(ROOT / "config" / "compose.toml")],
        capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "SWITCHYARD__AUTH__KEYS_FILE": str(keys)},
    )
    assert result.returncode == 0, result.stderr
    for backend in ("ollama", "local", "echo"):
        assert backend in result.stdout


def test_dockerfile_runs_non_root_with_a_healthcheck_on_matching_bases():
    dockerfile = (ROOT / "Dockerfile").read_text()
    code = [line for line in dockerfile.splitlines() if not line.startswith("#")]
    bases = [line.split()[1] for line in code if line.startswith("FROM ")]
    assert len(bases) == 2
    # A static (musl) binary on an empty base: no C library it could mismatch.
    assert bases[1] == "scratch", bases
    assert any("unknown-linux-musl" in line for line in code)
    users = [line.split()[1] for line in code if line.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0")), users
    healthcheck = " ".join(line for line in code if "HEALTHCHECK" in line or '"health"' in line)
    assert '"health"' in healthcheck
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"target/", "config/keys.json", "config/switchyard.toml"} <= set(ignored)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def keyed_gateway():
    """The built binary on its echo default, with one key."""
    with tempfile.TemporaryDirectory() as scratch:
        port = _free_port()
        keys = Path(scratch) / "keys.json"
        keys.write_text(json.dumps({"sk-smoke-right": "smoke"}))
        config = Path(scratch) / "switchyard.toml"
        config.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[auth]\nkeys_file = "{keys}"\n')
        process = subprocess.Popen(
            [_binary(), "--config", str(config)], cwd=scratch,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the gateway did not start"
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=10)


def _smoke(script, url, key):
    return subprocess.run(
        [str(ROOT / "scripts" / "smoke" / script)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "SWITCHYARD_URL": url, "SWITCHYARD_KEY": key,
             "SWITCHYARD_MODEL": "echo"},
    )


def test_smoke_scripts_pass_on_echo(keyed_gateway):
    result = _smoke("all", keyed_gateway, "sk-smoke-right")
    assert result.returncode == 0, result.stdout + result.stderr
    scripts = [p.name for p in (ROOT / "scripts" / "smoke").iterdir()
               if p.name.startswith(("openai-", "ollama-"))]
    assert len(scripts) >= 13
    for name in scripts:
        assert f"PASS {name}" in result.stdout


def test_smoke_scripts_fail_on_a_wrong_key(keyed_gateway):
    result = _smoke("openai-chat", keyed_gateway, "sk-smoke-wrong")
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    result = _smoke("all", keyed_gateway, "sk-smoke-wrong")
    assert result.returncode == 1
    assert "FAIL ollama-chat" in result.stdout


def test_a_smoke_script_fails_on_a_wrong_answer(keyed_gateway):
    # The echo backend answers with the prompt; telling the script to expect another
    # text is a wrong answer.
    result = subprocess.run(
        ["bash", "-c", 'source scripts/smoke/lib.sh; echo \'{"x": 1}\' > "$WORK/body"; '
         'check "expect_text(json.loads(body)[\\"x\\"] and \\"not the prompt\\")"'],
        capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "SWITCHYARD_MODEL": "echo"},
    )
    assert result.returncode == 1
    assert "wrong answer" in result.stderr


def _scripts():
    scripts = [p for p in (ROOT / "scripts").iterdir() if p.is_file() and os.access(p, os.X_OK)]
    scripts += [p for p in (ROOT / "scripts" / "smoke").iterdir() if os.access(p, os.X_OK)]
    return sorted(scripts)


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_script_answers_help_with_a_usage_line(script):
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.lower().startswith("usage:"), result.stdout


def _install(*args):
    return subprocess.run(
        [str(ROOT / "scripts" / "install.sh"), "--binary", _binary(), *args],
        capture_output=True, text=True, timeout=60,
    )


def test_install_dry_run_prints_everything_and_writes_nothing(tmp_path):
    etc_before = Path("/etc/switchyard").exists()
    unit_before = Path("/etc/systemd/system/switchyard.service").exists()
    result = _install("--dry-run", "--prefix", str(tmp_path / "prefix"), "--user", "sy-test")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("--- /etc/switchyard/switchyard.toml", "--- /etc/switchyard/keys.json",
                     "--- /etc/systemd/system/switchyard.service", "ProtectSystem=strict",
                     "StateDirectory=switchyard", "Restart=on-failure", "User=sy-test",
                     "+ install -D", "+ systemctl enable --now switchyard",
                     "dry run: nothing was written or run"):
        assert expected in out, expected
    assert list(tmp_path.iterdir()) == []
    assert Path("/etc/switchyard").exists() == etc_before
    assert Path("/etc/systemd/system/switchyard.service").exists() == unit_before


def test_install_into_a_destdir_writes_a_working_service(tmp_path):
    result = _install("--destdir", str(tmp_path), "--prefix", "/opt/sy")
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "opt/sy/bin/switchyard"
    assert os.access(installed, os.X_OK)
    keys_file = tmp_path / "etc/switchyard/keys.json"
    assert oct(keys_file.stat().st_mode & 0o777) == "0o640"
    keys = json.loads(keys_file.read_text())
    [(key, entry)] = keys.items()
    assert entry["user"] == "admin" and entry["admin"] is True
    assert key.startswith("sk-") and len(key) >= 32
    assert result.stdout.count(key) == 1, "the key is printed exactly once"
    unit = (tmp_path / "etc/systemd/system/switchyard.service").read_text()
    assert "ExecStart=/opt/sy/bin/switchyard serve --config /etc/switchyard/switchyard.toml" in unit
    config = tmp_path / "etc/switchyard/switchyard.toml"
    check = subprocess.run(
        [str(installed), "check", "--config", str(config)], capture_output=True, text=True,
        env={**os.environ, "SWITCHYARD__AUTH__KEYS_FILE": str(keys_file)},
    )
    assert check.returncode == 0, check.stderr
    # A second run keeps the configuration and the keys a user may have edited.
    again = _install("--destdir", str(tmp_path), "--prefix", "/opt/sy")
    assert again.returncode == 0
    assert json.loads(keys_file.read_text()) == keys
    assert "exists: kept as it is" in again.stdout
