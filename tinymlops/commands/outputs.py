"""Where the CLI writes: nothing a user has is ever deleted or silently overwritten.

A command that writes a directory owns a fixed set of names in it (a variant
directory: menu.json, menu.sig, blobs/, keys/, signing-key.pub.pem). It may
replace a previous output of its own, recognised by its marker file and by
holding nothing else. Any other non-empty directory is refused; `--force`
lets the command write beside what is there, but never over it: a name of
ours that already exists in someone else's directory (their `keys/`, say)
is refused even then, because replacing it would delete their files.

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


def directory_verdict(present: Collection[str], ours: Collection[str], marker: str, *, force: bool) -> str | None:
    """Why a directory holding `present` must not receive `ours`, or None when it may.

    None means: empty, or a previous output (has `marker`, nothing foreign), whose
    entries of ours may be replaced; or, with `force`, foreign entries that stay.
    """
    names = {name for name in present if not name.startswith(STAGING_PREFIX)}
    foreign = names - set(ours)
    if not names or (marker in names and not foreign):
        return None
    # Names of ours without the marker are not provably ours (a user's own keys/, for instance).
    clashes = names & set(ours)
    if clashes:
        return (f"not a previous output of this command, and {_names(clashes)} there would be replaced "
                "(even --force never replaces what is not ours); choose another directory")
    if force:
        return None
    return (f"not empty and not a previous output of this command; in the way: {_names(foreign)} "
            "(pass --force to write beside them, they are kept)")


def check_output_dir(directory: Path, ours: Collection[str], marker: str, *, force: bool, option: str) -> None:
    """Raise OutputRefused when writing `ours` into `directory` could lose something that is not ours."""
    if directory.exists() and not directory.is_dir():
        raise OutputRefused(f"{option} {directory}: is a file, not a directory")
    present = [entry.name for entry in directory.iterdir()] if directory.is_dir() else []
    reason = directory_verdict(present, ours, marker, force=force)
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
