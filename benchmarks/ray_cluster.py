"""What the Ray benchmarks share: a local two-node cluster on this machine, and the machine's
description. Imported by the scripts beside it (``python benchmarks/bench_ray_*.py`` puts this
folder on ``sys.path``).

The cluster: ``ray start --head --num-cpus 1`` and a second ``ray start --address HEAD
--num-cpus 1``, each a ``--block`` child ended by its own pid at the end (never ``ray stop``,
which ends every Ray on the machine). It lives for one run: Ray's token authentication (on by
default for ``ray start`` in recent Ray) is turned off for its nodes and drivers alike
(``CLUSTER_ENV``, which the commands run on it must also get), and RAY_ADDRESS is cleared so
that nothing joins another cluster by accident.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (e.g. AMD EPYC 7B13)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def describe_machine(cpus: int | None = None, cpu: str | None = None) -> str:
    """The machine as result files name it ("2-core AMD EPYC CPU, no GPU"): this one, or the
    one a run file recorded (``cpus``, ``cpu``)."""
    return f"{cpus or os.cpu_count()}-core {cpu or cpu_model()} CPU, no GPU"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_nodes(address: str, count: int, timeout: float = 120) -> None:
    """Until the cluster at ``address`` has ``count`` live nodes (asked in a child process, so
    the calling script never connects to Ray itself)."""
    probe = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR', "
        "log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            env={**os.environ, **CLUSTER_ENV},
        )
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise SystemExit(f"the Ray cluster at {address} did not reach {count} nodes in {timeout} s")


@contextmanager
def two_node_cluster() -> Iterator[tuple[str, list[int]]]:
    """A two-node cluster of one CPU each on this machine: yields the head's address and the
    nodes' pids, and ends both nodes on exit."""
    ray = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, **CLUSTER_ENV, "OMP_NUM_THREADS": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    head = [ray, "start", "--head", "--num-cpus", "1", "--port", str(port), "--block"]
    nodes = [subprocess.Popen([*head, "--include-dashboard", "false"], **quiet)]  # type: ignore[call-overload]
    try:
        wait_for_nodes(address, 1)
        worker = [ray, "start", "--address", address, "--num-cpus", "1", "--block"]
        nodes.append(subprocess.Popen(worker, **quiet))  # type: ignore[call-overload]
        wait_for_nodes(address, 2)
        yield address, [n.pid for n in nodes]
    finally:
        for node in reversed(nodes):
            node.terminate()
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                node.kill()
        # `ray start` left its address here, and a later ray.init() would try to join the
        # stopped cluster: remove it, as `ray stop` does, if it is still ours
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
