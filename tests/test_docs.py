"""The documentation cannot drift from the code: a changed flag, field or test breaks a test here.

- every ``--flag`` a page (or the README) gives an ``adps`` command exists in that command's
  parser, and every bare ``--flag`` in code exists in some command;
- every config field is documented on the method page, and every ``XConfig.field`` a page names
  exists;
- every test the metrics page names exists;
- the fenced blocks marked ``<!-- test -->`` run (bash, Python, YAML config files);
- the README keeps the two set-up commands and its headline figures equal the result files;
- the site builds with ``mkdocs build --strict`` and its pages render in headless Chromium.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from adps.cli import build_parser
from adps.config import ModelConfig, SynthesisConfig, TrainConfig, from_dict, load_config_file

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [*sorted(DOCS.rglob("*.md")), README]
sys.path.insert(0, str(DOCS))
import hooks  # noqa: E402 (docs/hooks.py, the CLI reference generator)
import screenshot  # noqa: E402 (docs/screenshot.py)

# programs whose flags are not adps's (a code span that starts with one is not checked,
# unless an `adps COMMAND` follows inside it)
OTHER_PROGRAMS = {
    "pip",
    "python",
    "python3",
    "torchrun",
    "bash",
    "curl",
    "mkdocs",
    "chromium",
    "cp",
    "cat",
    "git",
    "apt-get",
    "ADPS_TOKEN=s3cret",
    "/usr/bin/time",
    "tritonserver",
    "docker",
    "ray",
}
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, dict(action.choices)


PARSER, COMMANDS = _parsers()
ALL_FLAGS = set(PARSER._option_string_actions).union(
    *(set(p._option_string_actions) for p in COMMANDS.values())
)


def _code_snippets(text: str) -> list[str]:
    """Logical lines of fenced shell/text blocks and of inline code spans."""
    snippets = []
    for block in FENCE.finditer(text):
        if block["lang"] in ("", "bash", "sh", "shell", "console", "text"):
            body = re.sub(r"\\\n\s*", " ", block["body"])  # join continued lines
            snippets += body.splitlines()
    prose = FENCE.sub("", text)
    snippets += INLINE.findall(prose)
    return snippets


def _flag_problems(snippet: str, bare: bool = True) -> list[str]:
    """Flags in ``snippet`` that its ``adps`` command lacks; with ``bare``, also flags outside an
    ``adps`` call that no command has (the benchmark pages' bare flags are their scripts')."""
    snippet = re.sub(r"^\s*\$\s*", "", snippet.split(" # ")[0].split("  #")[0])
    problems = []
    calls = list(re.finditer(r"(?<![\w./-])adps\s+(\S+)", snippet))
    if not calls:
        first = snippet.split()[0] if snippet.split() else ""
        if first in OTHER_PROGRAMS or not bare:
            return []
        return [
            f"{flag!r} is no flag of any adps command"
            for flag in FLAG.findall(snippet)
            if flag.startswith("--") and flag not in ALL_FLAGS
        ]
    for call in calls:
        rest = re.split(r"\|\||&&|;|\|", snippet[call.start() :])[0]
        word = call[1]
        parser = COMMANDS.get(word, PARSER)
        known = (
            parser._option_string_actions if word in COMMANDS or word.startswith("-") else ALL_FLAGS
        )
        problems.extend(
            f"adps {word}: no flag {flag!r}"
            for flag in FLAG.findall(rest[len("adps") :])
            if flag not in known
        )
    return problems


def test_every_flag_the_docs_mention_exists():
    problems = []
    checked = 0
    for page in PAGES:
        for snippet in _code_snippets(page.read_text(encoding="utf-8")):
            found = _flag_problems(snippet, bare=DOCS / "benchmarks" not in page.parents)
            checked += bool(FLAG.search(snippet))
            problems += [f"{page.relative_to(ROOT)}: `{snippet.strip()}`: {p}" for p in found]
    assert checked > 100  # the extraction finds the pages' flags at all
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("snippet", "bad"),
    [
        ("adps train --data d --no-such-flag", "--no-such-flag"),
        ("adps predict x/ --model m.pt --epochs 3", "--epochs"),  # a train flag, not predict's
        ("torchrun --nproc-per-node 2 adps train --resume --typo", "--typo"),
        ("--tile-overlapp", "--tile-overlapp"),
    ],
)
def test_the_flag_check_catches_drift(snippet, bad):
    problems = _flag_problems(snippet)
    assert problems and all(bad in p for p in problems)
    assert not _flag_problems("torchrun --nproc-per-node 2 adps train --data d --resume")


def test_the_cli_reference_covers_every_command_and_flag():
    text = hooks.render_cli_reference()
    for name, parser in COMMANDS.items():
        assert f"## adps {name}" in text
        for flag in set(parser._option_string_actions) - {"-h", "--help"}:
            assert f"<code>{flag}</code>" in text, (name, flag)
    assert hooks.MARKER in (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- configs and tests

CONFIGS = {
    "ModelConfig": ModelConfig,
    "TrainConfig": TrainConfig,
    "SynthesisConfig": SynthesisConfig,
}


def test_every_config_field_is_on_the_method_page():
    """Every choice is a field, and every field says whether it is the paper's or ours."""
    lines = (DOCS / "method.md").read_text(encoding="utf-8").splitlines()
    missing = []
    for name, cls in CONFIGS.items():
        missing.extend(
            f"{name}.{field.name}"
            for field in dataclasses.fields(cls)
            if not any(
                f"`{name}.{field.name}`" in line
                or (f"`{name}." in line and f"`{field.name}`" in line)
                for line in lines
            )
        )
    assert not missing, f"docs/method.md does not document {missing}"


def test_every_config_field_the_docs_name_exists():
    wrong = []
    for page in PAGES:
        for name, attr in re.findall(
            r"\b(ModelConfig|TrainConfig|SynthesisConfig)\.(\w+)", page.read_text(encoding="utf-8")
        ):
            cls = CONFIGS[name]
            if attr not in {f.name for f in dataclasses.fields(cls)} and not hasattr(cls, attr):
                wrong.append(f"{page.relative_to(ROOT)}: {name}.{attr}")
    assert not wrong, wrong


def test_every_test_the_metrics_page_names_exists():
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py"))
    named = set(re.findall(r"`((?:test_|brute_)\w+)`", (DOCS / "metrics.md").read_text("utf-8")))
    assert len(named) >= 10
    missing = sorted(n for n in named if not re.search(rf"^def {n}\(", source, re.M))
    assert not missing, missing


# --------------------------------------------------------------------------- marked examples

MARKED = re.compile(r"<!-- test -->\s*\n```(?P<lang>\w+)[^\n]*\n(?P<body>.*?)^```", re.M | re.S)


def _marked(lang: str) -> list[tuple[str, str]]:
    return [
        (str(page.relative_to(ROOT)), block["body"])
        for page in PAGES
        for block in MARKED.finditer(page.read_text(encoding="utf-8"))
        if block["lang"] == lang
    ]


def test_there_are_marked_examples():
    assert len(_marked("bash")) >= 2 and _marked("python") and _marked("yaml")


def _env() -> dict[str, str]:
    # the adps script of this interpreter's environment comes first
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("page", "body"), _marked("bash"))
def test_marked_shell_examples_run(page, body, tmp_path):
    for line in body.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        result = subprocess.run(
            shlex.split(line, comments=True),
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"{page}: {line}\n{result.stdout}\n{result.stderr}"


@pytest.mark.integration
@pytest.mark.parametrize(("page", "body"), _marked("python"))
def test_marked_python_examples_run(page, body, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", body],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{page}:\n{body}\n{result.stderr}"


@pytest.mark.parametrize(("page", "body"), _marked("yaml"))
def test_marked_config_files_are_valid(page, body, tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(body, encoding="utf-8")
    sections = load_config_file(path)
    from_dict(ModelConfig, sections["model"])
    from_dict(TrainConfig, sections["train"])


# --------------------------------------------------------------------------- README


def test_readme_keeps_the_setup_commands_and_stays_short():
    text = README.read_text(encoding="utf-8")
    blocks = [b["body"].strip() for b in FENCE.finditer(text) if b["lang"] == "bash"]
    assert 'pip install -e ".[dev]" && python -m pytest -q' in blocks  # CI runs this line
    assert "pip install -e . && adps demo" in blocks
    assert len(text.splitlines()) <= 160


def test_readme_headline_equals_the_result_files():
    """The one table of figures outside the benchmark pages is a checked copy of them."""
    text = README.read_text(encoding="utf-8")
    comment = re.search(r"<!-- headline rows, in order: (.*?) -->\n(.*?)\n\n", text, re.S)
    assert comment, "README.md lost its headline table's source comment"
    sources = [s.strip() for s in comment[1].split(";")]
    rows = [r for r in comment[2].splitlines()[2:] if r.startswith("|")]
    assert len(rows) == len(sources) >= 1
    columns = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")
    for source, row in zip(sources, rows, strict=True):
        file, run = source.split("#", 1)
        results = json.loads((ROOT / "benchmarks" / "results" / file).read_text("utf-8"))
        entry = next((r for r in results["rows"] if r["run"] == run), None)
        assert entry is not None, f"{file} has no run {run!r}"
        cells = [c.strip() for c in row.strip("|").split("|")][-len(columns) :]
        assert [float(c) for c in cells] == [entry["metrics"][k] for k in columns], (source, row)


# --------------------------------------------------------------------------- the site


@pytest.mark.integration
@pytest.mark.slow
def test_the_site_builds_strictly_and_renders(tmp_path):
    if (
        importlib.util.find_spec("mkdocs") is None
        or importlib.util.find_spec("mkdocstrings") is None
    ):
        pytest.skip("the docs extra is not installed (pip install -e '.[docs]')")
    built = screenshot.build_site(tmp_path / "site")
    assert built.returncode == 0, built.stderr[-5000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
    chromium = screenshot.find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed: the site built, its rendering is unchecked")
    problems = screenshot.check_pages(chromium, tmp_path / "site", tmp_path)
    assert not any(problems.values()), problems
