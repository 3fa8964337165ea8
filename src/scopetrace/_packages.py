"""Which installed distribution owns a file, and at which version.

Runs at a report, on the thread that saw it, so it must be cheap the first
time too: ``importlib.metadata`` costs milliseconds to import and tens of
milliseconds to map files to distributions (``packages_distributions()``
reads every installed distribution).  This reads what the installers leave in
a site directory instead:

* a file under a site directory (a ``sys.path`` entry holding
  ``*.dist-info``) belongs to the top-level name after that directory
  (``site-packages/pydantic_ai/mcp.py`` -> ``pydantic_ai``);
* the distribution is the ``NAME-VERSION.dist-info`` (or ``.egg-info``) in
  that directory whose ``top_level.txt`` or ``RECORD`` lists that name --
  tried first for the directories whose name looks like it (``pydantic_ai``
  -> ``pydantic_ai_slim``), then for the rest;
* its version is the one in the directory's name (PEP 427/660 write it there).

Everything is cached per site directory and per top-level name.  A file
outside every site directory is the application's own (no package); the
standard library is ``None`` too.  Never raises.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import NamedTuple


class Distribution(NamedTuple):
    name: str
    version: str


_META = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)(?:-py[^-]*)?\.(?:dist|egg)-info$")
_lock = threading.Lock()
#: site directory -> {normalised distribution name: (Distribution, metadata dir)}
_listings: dict[str, dict[str, tuple[Distribution, str]]] = {}
#: (site directory, top-level name) -> Distribution or None
_owners: dict[tuple[str, str], Distribution | None] = {}


def normalise(name: str) -> str:
    """PEP 503 normalisation, as comparisons of distribution names need."""
    return re.sub(r"[-_.]+", "-", name).lower()


#: (sys.path as last seen, its site directories by name, the other entries)
_sites: tuple[tuple[str, ...], list[str], list[str]] = ((), [], [])
_SITE_NAMES = ("site-packages", "dist-packages")


def _site_dirs(thorough: bool = False) -> list[str]:
    """The site directories on ``sys.path``, longest first (a venv's
    site-packages may sit inside another prefix's tree).

    By name only (``site-packages``/``dist-packages``), which costs no I/O and
    is what the reporting thread uses; ``thorough`` adds any ``sys.path``
    entry holding a ``*.dist-info`` (``pip install --target``, a Lambda
    layer), found by listing it once.
    """
    global _sites
    path = tuple(sys.path)
    if path != _sites[0]:
        named: set[str] = set()
        listed: set[str] = set()
        for entry in path:
            if not entry:
                continue
            real = os.path.join(os.path.realpath(entry), "")
            if os.path.basename(real.rstrip(os.sep)) in _SITE_NAMES:
                named.add(real)
            else:
                listed.add(real)
        _sites = path, sorted(named, key=len, reverse=True), sorted(listed, key=len, reverse=True)
    by_name, others = _sites[1], _sites[2]
    if thorough:
        extra = [d for d in others if _has_metadata(_listing(d))]
    else:
        extra = [d for d in others if _has_metadata(_listings.get(d))]
    return sorted(by_name + extra, key=len, reverse=True)


def _has_metadata(listing: dict[str, tuple[Distribution, str]] | None) -> bool:
    return bool(listing) and any(meta.endswith(".dist-info") for _, meta in listing.values())  # type: ignore[union-attr]


#: filename -> its realpath: resolving one is a few lstat() calls, and the
#: reporting thread (an event loop) asks for the same few files at every
#: violation of a storm.  Bounded: cleared when full.
_real: dict[str, str] = {}
_REAL_MAX = 4096


def _realpath(filename: str) -> str:
    real = _real.get(filename)
    if real is None:
        if len(_real) >= _REAL_MAX:
            _real.clear()
        real = _real[filename] = os.path.realpath(filename)
    return real


def top_level(filename: str, thorough: bool = False) -> tuple[str, str] | None:
    """``(site directory, top-level name)`` of a file in a site directory, else None."""
    path = _realpath(filename) if os.path.isabs(filename) else filename
    for site in _site_dirs(thorough):
        if path.startswith(site):
            first = path[len(site) :].split(os.sep, 1)[0]
            name = first.removesuffix(".py")
            return (site, name) if name.isidentifier() else None
    return None


def _listing(site: str) -> dict[str, tuple[Distribution, str]]:
    listing = _listings.get(site)
    if listing is None:
        listing = {}
        try:
            entries = os.listdir(site)
        except OSError:
            entries = []
        for entry in entries:
            m = _META.match(entry)
            if m:
                dist = Distribution(m.group("name").replace("_", "-"), m.group("version"))
                listing[normalise(m.group("name"))] = (dist, os.path.join(site, entry))
        _listings[site] = listing
    return listing


def _read_lines(meta_dir: str, file: str) -> list[str]:
    try:
        with open(os.path.join(meta_dir, file), encoding="utf-8", errors="replace") as f:
            return f.readlines()
    except OSError:
        return []


def _owner(site: str, name: str, rel: str) -> Distribution | None:
    """The distribution whose ``RECORD`` lists ``rel`` (path relative to the
    site directory, with ``/``), trying the likely ones first: those named
    like the top-level name, then those whose ``top_level.txt`` names it
    (several, for a namespace package such as ``opentelemetry``)."""
    listing = _listing(site)
    wanted = normalise(name)
    entry = rel + ","

    def records(key: str) -> bool:
        return any(line.startswith(entry) for line in _read_lines(listing[key][1], "RECORD"))

    likely = sorted(
        (key for key in listing if key == wanted or key.startswith(wanted + "-")), key=len
    )
    for key in likely:
        if records(key):
            return listing[key][0]
    tops = [
        key
        for key in listing
        if key not in likely
        and any(line.strip() == name for line in _read_lines(listing[key][1], "top_level.txt"))
    ]
    for key in tops:
        if records(key):
            return listing[key][0]
    if len(likely) + len(tops) == 1:
        return listing[(likely + tops)[0]][0]  # no RECORD (an old install): the only candidate
    for key in listing:
        if key not in likely and key not in tops and records(key):
            return listing[key][0]
    return None


def distribution_of(filename: str) -> Distribution | None:
    """The distribution that installed ``filename``, or None (the application's
    own code, the standard library, or anything that cannot be told)."""
    try:
        place = top_level(filename, thorough=True)
        if place is None:
            return None
        site, name = place
        path = os.path.realpath(filename)
        rel = path[len(site) :].replace(os.sep, "/")
        key = (site, rel.rpartition("/")[0] or rel)
        with _lock:
            if key not in _owners:
                _owners[key] = _owner(site, name, rel)
            return _owners[key]
    except Exception:
        return None


def version_of(distributions: tuple[str, ...]) -> str | None:
    """Installed version of the first of ``distributions`` found on ``sys.path``."""
    try:
        with _lock:
            for site in _site_dirs(thorough=True):
                listing = _listing(site)
                for name in distributions:
                    found = listing.get(normalise(name))
                    if found is not None:
                        return found[0].version
    except Exception:
        pass
    return None


def forget() -> None:
    """Drop what was read (tests install and remove distributions)."""
    global _sites
    with _lock:
        _listings.clear()
        _owners.clear()
        _real.clear()
        _sites = ((), [], [])
