"""Where the CLI writes: nothing a user has is ever deleted or silently overwritten.

A command that writes a directory owns a fixed set of names in it (a variant
directory: menu.json, menu.sig, blobs/, keys/, signing-key.pub.pem). It may
replace a previous output of its own, recognised by its marker file (a
menu.json that is a variant menu). A directory holding anything else is
refused; `--force` lets the command write beside what is there, but never
over it: a name of ours in a directory without our marker (someone's own
`keys/`, say) is refused even then, because replacing it would delete
their files.

A command that writes files refuses to replace one that exists unless
`--force` is given, or the file is recognisably a previous output of its own.

The verdicts are pure functions over names; `check_*` read the file system
and raise `OutputRefused`, a click error that names the option, the path and
what is in the way.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

import click

SHOWN = 6  # entries named in a refusal; the rest are counted
# A command's staging directory inside its output; one left by a killed run is not in the way.
STAGING_PREFIX = ".tinymlops-staging-"


class OutputRefused(click.ClickException):
    """Writing there would delete or overwrite something that is not ours."""


def _names(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def directory_verdict(present: Collection[str], ours: Collection[str], marker: str | None, *,
                      force: bool) -> str | None:
    """Why a directory holding `present` must not receive `ours`, or None when it may.

    `marker` is the name of a previous output's marker file when the directory has one
    that is really ours (the caller checked its content), else None. Then the entries of
    ours may be replaced; without it, a name of ours there belongs to someone else and is
    never replaced. Other entries are in the way unless `force`, and are always kept.
    """
    names = {name for name in present if not name.startswith(STAGING_PREFIX)}
    foreign = names - set(ours)
    clashes = set() if marker in names else names & set(ours)
    if clashes:
        return (f"not a previous output of this command, and {_names(clashes)} there would be replaced "
                "(even --force never replaces what is not ours); choose another directory")
    if not foreign or force:
        return None
    return (f"not empty and not only a previous output of this command; in the way: {_names(foreign)} "
            "(pass --force to write beside them, they are kept)")


def check_output_dir(directory: Path, ours: Collection[str], marker: str, *, force: bool, option: str,
                     marker_is_ours: Callable[[Path], bool] = lambda _: True) -> None:
    """Raise OutputRefused when writing `ours` into `directory` could lose something that is not ours."""
    if directory.exists() and not directory.is_dir():
        raise OutputRefused(f"{option} {directory}: is a file, not a directory")
    present = [entry.name for entry in directory.iterdir()] if directory.is_dir() else []
    ours_marker = marker if marker in present and marker_is_ours(directory / marker) else None
    reason = directory_verdict(present, ours, ours_marker, force=force)
    if reason is not None:
        raise OutputRefused(f"{option} {directory}: {reason}")


def check_output_files(paths: Iterable[Path], *, force: bool, option: str,
                       ours: Callable[[Path], bool] = lambda _: False) -> None:
    """Raise OutputRefused when one of `paths` exists, is not a previous output (`ours`), and `force` is off."""
    for path in paths:
        if path.is_dir():
            raise OutputRefused(f"{option} {path}: is a directory, not a file")
        if path.exists() and not force and not ours(path):
            raise OutputRefused(f"{option}: {path} exists (pass --force to replace it)")


def install_entries(staging: Path, directory: Path, ours: Collection[str], *, last: Sequence[str] = ()) -> None:
    """Move every entry of `staging` into `directory`, replacing ours; `last` names move last, in order.

    Entries of ours that the new output lacks (keys/ of an encrypted build before a plain
    one) are removed first; call this only after `check_output_dir` accepted `directory`.
    Moving the menu last means a reader never finds a menu whose blobs are not there yet.
    """
    directory.mkdir(parents=True, exist_ok=True)
    staged = sorted(staging.iterdir(), key=lambda p: (last.index(p.name) if p.name in last else -1, p.name))
    for name in set(ours) - {entry.name for entry in staged}:
        _remove(directory / name)
    for entry in staged:
        _remove(directory / entry.name)
        entry.rename(directory / entry.name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
