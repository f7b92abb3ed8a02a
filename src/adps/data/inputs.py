"""Which files a predict run scores: folders, files and glob patterns turned into one ordered
list, with what matched nothing and what a folder held that is not an image.

Every engine of `adps predict` (one process, torchrun, Ray) starts from this list, so they score
the same files in the same order and give each the same output name.
"""

from __future__ import annotations

import glob
from pathlib import Path

from adps.data.datasets import list_files, name_some


def collect_inputs(
    inputs: list[str],
    recursive: bool,
) -> tuple[list[tuple[Path, str]], list[tuple[str, str]], list[Path]]:
    """(file, output name) pairs, (input, reason) for inputs that match nothing, and the
    files of the folders that were skipped for their extension.

    Output names keep a file's path relative to the folder it was found in, so two folders'
    ``001.png`` do not overwrite each other.
    """
    files: list[tuple[Path, str]] = []
    missing: list[tuple[str, str]] = []
    skipped: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found, others = list_files(path, recursive=recursive)
            skipped += others
            files += [(p, str(p.relative_to(path))) for p in found]
            if not found:
                missing.append(
                    (
                        item,
                        "folder holds no images"
                        + ("" if recursive else " (use --recursive for sub-folders)"),
                    )
                )
        elif path.is_file():
            files.append((path, path.name))
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=recursive))
            matches = [m for m in matches if m.is_file()]
            files += [(m, m.name) for m in matches]
            if not matches:
                missing.append((item, "no such file, folder or matching pattern"))
    names: dict[str, int] = {}
    unique = []
    for path, name in files:
        count = names.get(name, 0)
        names[name] = count + 1
        unique.append(
            (path, name if count == 0 else f"{Path(name).stem}_{count}{Path(name).suffix}")
        )
    return unique, missing, skipped


def skipped_summary(skipped: list[Path]) -> str:
    """One line that counts and names the files a folder held that are not images."""
    kinds = ", ".join(sorted({p.suffix.lower() or "(no extension)" for p in skipped}))
    return (
        f"skipped {len(skipped)} file(s) without an image extension ({kinds}): "
        f"{name_some([str(p) for p in skipped])}"
    )
