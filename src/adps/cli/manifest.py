"""A manifest of products for ``adps benchmark --manifest``: one row per product, one model each.

A row is a ``name``, a ``data`` folder (any layout adps reads) and any setting that
``adps benchmark`` takes as a flag, written without the dashes (``time_budget: 90s``,
``image_size: 128``, ``category: bottle``, ``prior: memory``, ``no_amp: true``), plus the Ray
resources ``num_cpus`` and ``num_gpus``. Each setting is parsed by the command's own argparse
action, so a manifest accepts exactly what the flag accepts, with the same types and choices.

Two forms:

* YAML: a list of rows, or ``{defaults: {...}, products: [...]}`` where ``defaults`` holds
  settings every row starts from.
* CSV: a header of setting names, one row per line; an empty cell leaves the setting unset.

A row's value wins over ``defaults``, which win over the flags on the command line. Relative
paths in the manifest (``data``, ``split_file``, ``config``, ...) are relative to the
manifest's folder, so a manifest can be moved with its data.

Everything is checked before anything trains: every refusal names the file, the row (number,
name and line) and the field. What needs the data read (a folder that exists but holds no
usable layout) fails its row at run time instead, and the other rows go on.
"""

from __future__ import annotations

import argparse
import copy
import csv
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adps.cli.options import (
    add_data_arguments,
    add_eval_resolution_argument,
    add_overlap_argument,
    add_training_arguments,
    configs_from_args,
    data_spec,
)
from adps.engine.benchmark import BenchmarkEntry, EntrySettings, Resources, config_dicts
from adps.errors import AdpsError

RESOURCES = ("num_cpus", "num_gpus")
# settings whose relative value is a path from the manifest's folder
PATHS = ("data", "split_file", "cache_dir", "config", "textures", "teacher_weights")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0", ""}
_TOP_LEVEL = ("defaults", "products")


@dataclass
class Row:
    """One product as written: where it is in the file, and its raw values by setting name."""

    number: int  # 1-based position among the rows
    line: int
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        value = self.values.get("name")
        return None if value is None else str(value)

    def where(self) -> str:
        name = f"'{self.name}', " if self.name else ""
        return f"row {self.number} ({name}line {self.line})"


class _Refused(Exception):
    """argparse's own message about a value, caught instead of exiting."""


class _SettingsParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _Refused(message)


def _settings_parser() -> _SettingsParser:
    """The flags of ``adps benchmark`` that describe one entry (data, model, training,
    evaluation); built from the same functions as the command's parser."""
    parser = _SettingsParser(add_help=False)
    add_data_arguments(parser, required=False)
    add_training_arguments(parser)
    add_eval_resolution_argument(parser)
    add_overlap_argument(parser, "test")
    return parser


def setting_actions(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.Action]]:
    """Setting name (the flag without dashes, ``-`` as ``_``) -> (flag, its argparse action)."""
    actions = {}
    for action in parser._actions:  # the parser's own list: every flag the command defines
        for flag in action.option_strings:
            if flag.startswith("--") or len(flag) == 2:
                actions[_key(flag)] = (flag, action)
    return actions


def _key(text: str) -> str:
    return str(text).strip().lstrip("-").replace("-", "_").lower()


def known_settings() -> list[str]:
    """Every name a row may use."""
    return sorted([*setting_actions(_settings_parser()), "name", *RESOURCES])


def unknown(name: str) -> str:
    """Why ``name`` is refused, with the setting it most likely meant."""
    known = known_settings()
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    close = close or [k for k in known if k.endswith(f"_{name}")][:1]  # size -> image_size
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown setting{hint}; `adps benchmark --help` lists them"


# --- reading the file -------------------------------------------------------------------------


def read_rows(path: Path) -> tuple[dict[str, Any], list[Row]]:
    """(defaults, rows) as written in a YAML or CSV manifest; keys normalized, nothing parsed."""
    if not path.is_file():
        raise AdpsError("manifest file not found", path)
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix in (".yaml", ".yml"):
        defaults, rows = _yaml_rows(path, text)
    elif suffix == ".csv":
        defaults, rows = {}, _csv_rows(path, text)
    else:
        raise AdpsError("a manifest is a .yaml, .yml or .csv file", path)
    if not rows:
        raise AdpsError("the manifest lists no products", path)
    return defaults, rows


def _mapping(node: yaml.MappingNode, path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping's keys (normalized) and values, refusing a duplicate or non-text key."""
    loader = yaml.SafeLoader("")
    own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)  # YAML merge keys (<<: *common) first, the row's own after
    values: dict[str, Any] = {}
    merged: set[str] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise AdpsError(f"{what}: setting names are text, got {key!r}", path)
        name = _key(key)
        if id(key_node) not in own:
            merged.add(name)
        elif name in merged:
            merged.discard(name)  # the row's own value overrides the merged one
        elif name in values:
            raise AdpsError(
                f"{what}: field '{name}' is given twice (line {key_node.start_mark.line + 1})",
                path,
            )
        values[name] = loader.construct_object(value_node, deep=True)
    return values


def _yaml_rows(path: Path, text: str) -> tuple[dict[str, Any], list[Row]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise AdpsError(f"not valid YAML: {exc}", path) from exc
    defaults: dict[str, Any] = {}
    if isinstance(root, yaml.MappingNode):
        top = dict(_mapping_nodes(root))
        unknown = sorted(set(top) - set(_TOP_LEVEL))
        if unknown:
            raise AdpsError(
                f"unknown top-level key(s) {unknown}: a manifest is a list of products, or "
                f"a mapping with 'products' (the list) and optionally 'defaults'",
                path,
            )
        if "products" not in top:
            raise AdpsError("no 'products' list: the rows go under 'products:'", path)
        if "defaults" in top:
            node = top["defaults"]
            if not isinstance(node, yaml.MappingNode):
                raise AdpsError(
                    f"'defaults' (line {node.start_mark.line + 1}) must be a mapping of settings",
                    path,
                )
            defaults = _mapping(node, path, "defaults")
            if "name" in defaults:
                raise AdpsError("defaults: field 'name' belongs to each row, not to defaults", path)
        root = top["products"]
    if not isinstance(root, yaml.SequenceNode):
        line = root.start_mark.line + 1 if root is not None else 1
        raise AdpsError(f"line {line}: the products must be a YAML list of rows", path)
    rows = []
    for number, node in enumerate(root.value, 1):
        row = Row(number, node.start_mark.line + 1)
        if not isinstance(node, yaml.MappingNode):
            raise AdpsError(
                f"{row.where()}: a row is a mapping of settings (name: ..., data: ...)", path
            )
        names = [v.value for k, v in node.value if k.value == "name" and v.value]
        row.values = {"name": names[0]} if names else {}  # so an error names the row
        row.values = _mapping(node, path, row.where())
        rows.append(row)
    return defaults, rows


def _mapping_nodes(node: yaml.MappingNode) -> list[tuple[str, yaml.Node]]:
    return [(str(k.value), v) for k, v in node.value]


def _csv_rows(path: Path, text: str) -> list[Row]:
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise AdpsError(
            "empty CSV: the first line names the columns (name,data,...)", path
        ) from None
    columns = [_key(c) for c in header]
    known = known_settings()
    for column in columns:
        if columns.count(column) > 1:
            raise AdpsError(f"line 1: column '{column}' is given twice", path)
        if column not in known:
            raise AdpsError(f"line 1: column '{column}': {unknown(column)}", path)
    rows: list[Row] = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue  # a blank line
        row = Row(len(rows) + 1, reader.line_num)
        if len(cells) != len(columns):
            raise AdpsError(
                f"{row.where()}: {len(cells)} cells for the {len(columns)} columns of the header",
                path,
            )
        row.values = {c: v.strip() for c, v in zip(columns, cells, strict=True) if v.strip()}
        rows.append(row)
    return rows


# --- checking and turning rows into entries ---------------------------------------------------


def _switch(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _parse_setting(
    name: str, value: Any, parser: argparse.ArgumentParser, base: Path
) -> tuple[str, Any] | None:
    """(namespace attribute, value) for one setting, as the flag would set it (a switch set to
    false: as when the flag is not given); None for an empty value, which leaves the setting
    as it was. Raises ValueError with why."""
    actions = setting_actions(parser)
    if name not in actions:
        raise ValueError(unknown(name))
    flag, action = actions[name]
    if value is None:
        return None
    if action.nargs == 0:  # a switch: --no-amp, --allow-overlap, --masks-optional
        on = _switch(value)
        if on is None:
            raise ValueError(f"a switch: true or false, got {value!r}")
        if not on:  # off: the flag's default, so a row can turn off what defaults turned on
            return action.dest, action.default
        argv = [flag]
    else:
        if isinstance(value, bool | list | dict):
            raise ValueError(
                f"expects a value for {flag}, got {value!r} (quote it if YAML read it as a yes/no)"
            )
        text = str(value)
        if name in PATHS:
            text = str(base / Path(text).expanduser())  # an absolute path stays as it is
        argv = [f"{flag}={text}"] if flag.startswith("--") else [flag, text]
    try:
        parsed = parser.parse_args(argv, namespace=argparse.Namespace())
    except _Refused as exc:
        raise ValueError(str(exc).replace("argument ", "")) from None
    return action.dest, getattr(parsed, action.dest)


def _resource(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a number, got {value!r}") from None


@dataclass
class Manifest:
    """The entries of a manifest, and the configs a row with no settings of its own would get
    (the flags, then ``defaults:``), which the table records as the run's; None when those
    alone do not make a valid config (e.g. a size every row pairs with its own ``k``)."""

    entries: list[BenchmarkEntry]
    configs: dict[str, dict] | None


def read_manifest(path: Path, args: argparse.Namespace) -> Manifest:
    """Every row of the manifest as a :class:`BenchmarkEntry` trained into ``args.out/name``,
    after every check that needs no training; :class:`AdpsError` at the first problem."""
    path = Path(path)
    defaults, rows = read_rows(path)
    parser = _settings_parser()
    base = path.resolve().parent
    default_resources = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}

    def apply(values: dict[str, Any], ns: argparse.Namespace, res: dict, where: str) -> None:
        for name, value in values.items():
            if name == "name":
                continue
            try:
                if name in RESOURCES:
                    if value is not None and str(value).strip() != "":
                        res[name] = _resource(name, value)
                    continue
                parsed = _parse_setting(name, value, parser, base)
            except ValueError as exc:
                raise AdpsError(f"{where}: field '{name}': {exc}", path) from None
            if parsed is not None:
                setattr(ns, *parsed)

    base_ns = copy.copy(args)
    apply(defaults, base_ns, default_resources, "defaults")
    entries: list[BenchmarkEntry] = []
    seen: dict[str, str] = {}
    for row in rows:
        name = row.name
        if name is None or not name.strip():
            raise AdpsError(f"{row.where()}: field 'name' is missing", path)
        if not _NAME.fullmatch(name):
            raise AdpsError(
                f"{row.where()}: field 'name': '{name}' is not a folder name (letters, "
                "digits, '.', '_' and '-', starting with a letter or digit)",
                path,
            )
        if name.lower() in seen:
            raise AdpsError(
                f"{row.where()}: field 'name': '{name}' is also the name of "
                f"{seen[name.lower()]}; each product trains into OUT/<name>/, so names must "
                "differ (in more than case)",
                path,
            )
        seen[name.lower()] = row.where()
        ns, resources = copy.copy(base_ns), dict(default_resources)
        apply(row.values, ns, resources, row.where())
        if not ns.data:
            raise AdpsError(f"{row.where()}: field 'data' is missing", path)
        if not Path(ns.data).is_dir():
            raise AdpsError(f"{row.where()}: field 'data': no such folder {ns.data}", path)
        for key in RESOURCES:
            try:
                Resources(**{key: resources[key]})
            except AdpsError as exc:
                raise AdpsError(f"{row.where()}: field '{key}': {exc}", path) from None
        try:
            model_config, train_config = configs_from_args(ns)
            spec = data_spec(ns)
            settings = entry_settings(ns)
        except AdpsError as exc:
            raise AdpsError(f"{row.where()}: {exc}", path) from None
        entries.append(
            BenchmarkEntry(
                name,
                spec,
                model_config,
                train_config,
                Path(args.out),
                settings,
                Resources(**resources),
            )
        )
    try:
        configs: dict[str, dict] | None = config_dicts(*configs_from_args(base_ns))
    except AdpsError:
        configs = None
    return Manifest(entries, configs)


def entry_settings(args: argparse.Namespace) -> EntrySettings:
    """The run settings an entry takes from the flags (or a manifest row's namespace)."""
    return EntrySettings(
        device=args.device,
        teacher_weights=args.teacher_weights,
        allow_download=bool(args.allow_download),
        eval_resolution=args.eval_resolution,
        allow_overlap=bool(args.allow_overlap),
        progress=not args.no_progress,
    )
