"""Print pip constraints that pin every dependency of pyproject.toml to its declared floor.

Each requirement in [project].dependencies and in every [project.optional-dependencies] extra
must read ``name>=X`` (optionally followed by more specifiers separated by commas, e.g. ``<Y``
or ``!=Z``); it becomes ``name==X``. Anything else (no floor, ``==``, ``~=``, markers, a URL)
is an error, so a dependency cannot go untested at its floor. A package named twice (in two
extras) must have the same floor in both.

Usage (Python >= 3.11, for tomllib):
    python .ci/floors.py [pyproject.toml] > constraints.txt   # name==floor, one a line
    python .ci/floors.py --extras [pyproject.toml]             # every extra, comma-separated
    python .ci/floors.py --check [pyproject.toml]              # the installed versions are the floors
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*>=\s*([0-9][A-Za-z0-9.+!-]*)"
                  r"\s*((?:,\s*(?:<|<=|!=)\s*[0-9][A-Za-z0-9.*+!-]*\s*)*)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors(pyproject: Path) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    groups = {"dependencies": project.get("dependencies", [])}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        groups[f"optional-dependencies.{extra}"] = reqs
    pins: dict[str, str] = {}
    errors = []
    for group, reqs in groups.items():
        for req in reqs:
            match = _REQ.match(req)
            if not match:
                errors.append(f"{group}: {req!r} does not read 'name>=X' (a floor CI can pin)")
                continue
            name, version = normalize(match.group(1)), match.group(3)
            if name == normalize(project["name"]):
                continue  # a self-reference (adps[extra]): no pin of its own
            if pins.setdefault(name, version) != version:
                errors.append(f"{group}: {name} has floor {version}, elsewhere {pins[name]}")
    if errors:
        sys.exit("\n".join(["pyproject.toml: dependency floors cannot be pinned:", *errors]))
    return pins


def _release(version: str) -> tuple:
    """``2024.4.0`` -> (2024, 4); a version with other parts (``1.4.1.post1``) as itself."""
    parts = version.split(".")
    if not all(p.isdigit() for p in parts):
        return (version,)
    numbers = [int(p) for p in parts]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def check(pins: dict[str, str]) -> None:
    """Exit non-zero unless every pinned package is installed at exactly its floor."""
    wrong = []
    for name, version in sorted(pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or _release(installed.split("+")[0]) != _release(version):
            wrong.append(f"  {name}: floor {version}, installed {installed or 'nothing'}")
    if wrong:
        sys.exit("\n".join(["not at their declared floors:", *wrong]))
    print(f"{len(pins)} dependencies installed at their declared floors")


def main() -> None:
    args = sys.argv[1:]
    mode = args.pop(0) if args and args[0] in ("--extras", "--check") else None
    path = Path(args[0]) if args else Path(__file__).parent.parent / "pyproject.toml"
    if mode == "--extras":
        extras = tomllib.loads(path.read_text(encoding="utf-8"))["project"].get(
            "optional-dependencies", {})
        print(",".join(sorted(extras)))
        return
    pins = floors(path)
    if mode == "--check":
        check(pins)
        return
    for name, version in sorted(pins.items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
