"""Hypothesis explores new examples on developers' machines but replays a fixed set in CI
(CI=true), so a landing never depends on the luck of one run."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from servekit import unused_port

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def conversion_cache(tmp_path_factory):
    """Converted models (OpenVINO) go to a folder of this test session, not ~/.cache; the
    variable reaches the servers and torchrun ranks the tests start."""
    old = os.environ.get("ADPS_CACHE_DIR")
    os.environ["ADPS_CACHE_DIR"] = str(tmp_path_factory.mktemp("adps-cache"))
    yield Path(os.environ["ADPS_CACHE_DIR"])
    if old is None:
        del os.environ["ADPS_CACHE_DIR"]
    else:
        os.environ["ADPS_CACHE_DIR"] = old


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on now (a test server, torch.distributed's rendezvous), so
    parallel test runs do not collide."""
    return unused_port()


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: on a busy 2-core machine OpenMP's spinning makes 2
    threads up to 10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (starting one costs about 5 s): two CPUs,
    no dashboard, logs kept out of the test output. Tests that need Ray take this fixture; the
    instance is shut down when the session ends."""
    import ray  # the dev extra installs it; imported here so that other tests never load it

    if not ray.is_initialized():
        ray.init(
            address="local",  # a private instance, never a `ray start` cluster found running
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )
    yield ray
    ray.shutdown()
