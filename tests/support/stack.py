"""What every Python suite needs to run the built binaries: the paths `scripts/test`
gives them, free loopback ports, a mock upstream and a gateway started on a config of
the suite's own and stopped again (only the processes started here, by handle).

On the path through `pytest.ini`'s `pythonpath`, so each suite's conftest imports it.
"""

import contextlib
import os
import socket
import subprocess
import time
import urllib.request

import pytest

STARTUP_SECONDS = 20


def built_binary(variable):
    """The executable `$variable` names (`SWITCHYARD_BIN`, `MOCK_UPSTREAM_BIN`)."""
    path = os.environ.get(variable)
    if not path:
        pytest.fail(f"${variable} is not set; run the suite through scripts/test")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        pytest.fail(f"${variable}={path} is not an executable file; build it first")
    return path


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process, kill=False):
    """Ends a process started here (SIGTERM, or SIGKILL when `kill`), killing it if it
    lingers."""
    if process.poll() is not None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_mock(binary):
    """Starts the mock upstream on a free port: its process and base URL."""
    process = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline().strip()
    prefix = "mock upstream listening on "
    if not line.startswith(prefix):
        stop(process)
        pytest.fail(f"mock upstream did not start; its first line was {line!r}")
    return process, line[len(prefix):]


def healthy(base):
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running_stack(tmp_path_factory, name, write_config):
    """The mock upstream and a gateway on `write_config(directory, listen, mock_url)`
    (which returns the config's path), run in a fresh temporary folder: yields the
    gateway's base URL, the mock's, and the gateway's stderr log; stops both after."""
    switchyard = built_binary("SWITCHYARD_BIN")
    mock_binary = built_binary("MOCK_UPSTREAM_BIN")
    directory = tmp_path_factory.mktemp(name)
    mock, mock_url = start_mock(mock_binary)
    listen = f"127.0.0.1:{free_port()}"
    config = write_config(directory, listen, mock_url)
    stderr_path = directory / "switchyard.stderr"
    # Neither $SWITCHYARD_CONFIG nor SWITCHYARD__* overrides may change this config.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env.setdefault("RUST_LOG", "info")
    with open(stderr_path, "wb") as stderr:
        gateway = subprocess.Popen(
            [switchyard, "--config", str(config)],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://{listen}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not healthy(base):
            if gateway.poll() is not None or time.monotonic() > deadline:
                stop(gateway)
                log = stderr_path.read_text(errors="replace")
                pytest.fail(
                    f"gateway did not answer GET {base}/health within {STARTUP_SECONDS}s "
                    f"(exit status {gateway.returncode}); its stderr:\n{log}"
                )
            time.sleep(0.1)
        yield base, mock_url, stderr_path
    finally:
        stop(gateway)
        stop(mock)
