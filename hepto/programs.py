"""Finding the upstream programs hepto runs: ``--bin-dir`` first, then ``PATH``.

A missing program is reported before anything starts, in one sentence that names the
program, every place it was looked for, and how to get it.  The bundle's directory
works as ``--bin-dir`` as it is, and so does a directory of official release binaries.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from hepto.config import ConfigError

#: Where tools/build-bundle leaves the current build's symlinks.
BUNDLE_BIN_DIR: Final = Path("/var/cache/hepto/bundle/current/bin")
HOW_TO_GET: Final = (
    "build them with tools/build-bundle (it prints the directory to pass as --bin-dir, "
    f"usually {BUNDLE_BIN_DIR}), or put the official release binaries in a directory "
    "and pass that"
)


class MissingProgram(ConfigError):
    """Some programs are nowhere to be found; ``str()`` says where we looked and what to do."""

    def __init__(
        self,
        missing: Sequence[str],
        searched: Sequence[tuple[Path, str]],
        unusable: Mapping[str, Path],
    ) -> None:
        self.missing = tuple(missing)
        self.searched = tuple(searched)
        self.unusable = dict(unusable)
        names = _join(self.missing)
        places = "; ".join(f"{directory} ({origin})" for directory, origin in self.searched)
        message = f"{names} not found in {places or 'an empty PATH'}"
        for path in self.unusable.values():
            message += f"; {path} exists but is not an executable file"
        super().__init__("bin-dir", f"{message}. To get {names}: {HOW_TO_GET}")


def _join(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def search_path(bin_dir: Path | None, path: str | None = None) -> list[tuple[Path, str]]:
    """The directories looked in, in order, each with why: ``--bin-dir`` then ``PATH``."""
    places: list[tuple[Path, str]] = []
    if bin_dir is not None:
        places.append((bin_dir, "--bin-dir"))
    text = os.environ.get("PATH", os.defpath) if path is None else path
    for entry in text.split(os.pathsep):
        if entry and (Path(entry), "PATH") not in places:
            places.append((Path(entry), "PATH"))
    return places


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_programs(
    names: Iterable[str], bin_dir: Path | None, path: str | None = None
) -> dict[str, Path]:
    """The absolute path of every named program, or :class:`MissingProgram` for all missing.

    Paths are not resolved: the bundle's symlinks must keep their names, since the
    multi-call binary picks the program from ``argv[0]``.
    """
    places = search_path(bin_dir, path)
    found: dict[str, Path] = {}
    missing: list[str] = []
    unusable: dict[str, Path] = {}
    for name in dict.fromkeys(names):
        for directory, _ in places:
            candidate = directory / name
            if _executable(candidate):
                found[name] = candidate.absolute()
                break
            if candidate.exists() and name not in unusable:
                unusable[name] = candidate
        else:
            missing.append(name)
    if missing:
        raise MissingProgram(
            missing, places, {name: unusable[name] for name in missing if name in unusable}
        )
    return found


def find_program(name: str, bin_dir: Path | None, path: str | None = None) -> Path:
    return find_programs([name], bin_dir, path)[name]
