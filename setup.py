"""The build's one check before setuptools (pyproject.toml holds the rest): `facestream/`
links the top-level folders, and a clone made without symlinks (`core.symlinks=false`, the
Windows default) checks each link out as a small text file, from which setuptools would build a
wheel holding only `facestream/__init__.py` without a word (docs/architecture.md)."""

from pathlib import Path

from setuptools import setup

LINKED = ("common", "control", "detector", "ingest", "sink")
here = Path(__file__).resolve().parent
broken = [name for name in LINKED if not (here / "facestream" / name / "__init__.py").is_file()]
if broken:
    raise SystemExit(
        "facestream/" + ", facestream/".join(broken) + " must link to the top-level folder(s) "
        "of the same name, and here they do not: this clone was made without symlinks. Clone "
        "again with `git clone -c core.symlinks=true` (on Windows: with Developer Mode on, or "
        "in WSL); docs/architecture.md."
    )
setup()
