"""pyproject.toml's dependency floors stay pinnable and honest (CI's stage 2 installs them).

.ci/floors.py turns every ``name>=X`` into ``name==X``; CI installs those pins into a second
environment and runs this suite there. These checks fail fast, in either stage, on a
requirement that such a run could not pin, and on a test-only package imported by the library.
"""

from __future__ import annotations

import functools
import operator
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOORS = ROOT / ".ci" / "floors.py"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _floors(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(FLOORS), *args], capture_output=True, text=True, check=False
    )


@pytest.mark.integration
def test_every_dependency_has_a_floor_ci_pins():
    result = _floors(str(ROOT / "pyproject.toml"))
    assert result.returncode == 0, result.stderr
    pins = dict(line.split("==") for line in result.stdout.split())
    project = _project()
    names = [
        *project["dependencies"],
        *functools.reduce(operator.iadd, project["optional-dependencies"].values(), []),
    ]
    for req in names:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", req).group()).lower()
        assert name in pins, req
    assert pins["torch"] == "2.14.1"  # the torch .ci/run installs


def test_requires_python_is_the_python_ci_runs():
    # fileio uses hashlib.file_digest (3.11); CI runs one Python, this one
    assert _project()["requires-python"] == ">=3.11"
    assert sys.version_info >= (3, 11)


@pytest.mark.integration
def test_a_requirement_without_a_floor_is_refused(tmp_path):
    bad = tmp_path / "pyproject.toml"
    bad.write_text(
        '[project]\nname = "x"\ndependencies = ["numpy", "scipy>=1.13", "tqdm~=4.6"]\n'
        '[project.optional-dependencies]\na = ["onnx>=1.17"]\nb = ["onnx>=1.16"]\n'
    )
    result = _floors(str(bad))
    assert result.returncode != 0
    for text in ("'numpy'", "'tqdm~=4.6'", "onnx has floor"):
        assert text in result.stderr
    assert "scipy" not in result.stderr


def test_test_only_packages_are_not_imported_by_the_library():
    """scikit-learn, pytest and hypothesis are in the dev extra only: the library never imports
    them (the tests use scikit-learn as a reference implementation)."""
    pattern = re.compile(r"^\s*(?:import|from)\s+(sklearn|pytest|hypothesis)\b", re.M)
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "src").rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert not offenders


@pytest.mark.integration
def test_pre_commit_runs_the_checkers_ci_runs():
    """.pre-commit-config.yaml pins ruff and mypy (and mypy's type stubs) to the dev extra's
    floors, the versions .ci/run's static checks install, so a commit and CI agree."""
    import yaml

    result = _floors(str(ROOT / "pyproject.toml"))
    assert result.returncode == 0, result.stderr
    pins = dict(line.split("==") for line in result.stdout.split())
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    repos = {repo["repo"].rsplit("/", 1)[-1]: repo for repo in config["repos"]}
    assert repos["ruff-pre-commit"]["rev"] == f"v{pins['ruff']}"
    assert repos["mirrors-mypy"]["rev"] == f"v{pins['mypy']}"
    (mypy_hook,) = repos["mirrors-mypy"]["hooks"]
    stubs = [r for r in mypy_hook["additional_dependencies"] if r.lower().startswith("types-")]
    assert stubs
    for req in stubs:
        name, floor = req.split(">=")
        assert pins[name.lower()] == floor, req
