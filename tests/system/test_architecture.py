"""The layering rule (docs/architecture.md) holds, and breaking it fails: import-linter run on a
copy of the tree with a deliberate violation added; and the wheel installs one package."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support.procs import ROOT

PACKAGES = ("common", "ingest", "detector", "sink", "control")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def tree_copy(dest: Path) -> Path:
    """The packages, the facestream/ links, pyproject.toml and setup.py, as in a checkout."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "facestream", dest / "facestream", symlinks=True)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy(ROOT / "setup.py", dest / "setup.py")
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_the_contracts() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        # Inside a function, where a reader would not see it at the top of the file.
        (
            "common/violation.py",
            "def f() -> None:\n    import facestream.detector.worker  # noqa: F401\n",
            "control above the services",
        ),
        ("ingest/violation.py", "import facestream.sink.runner  # noqa: F401\n", "services apart"),
        ("detector/model/violation.py", "import redis  # noqa: F401\n", "model code stands alone"),
        (
            "detector/model/violation.py",
            "from facestream.detector import pipeline  # noqa: F401\n",
            "model code stands alone",
        ),
        (
            "ingest/violation.py",
            "from facestream.ingest.http import app as gateway  # noqa: F401\n",
            "no import cycles",
        ),
        # What users import to publish must not pull in the gateway (FastAPI, uvicorn).
        ("ingest/coalesce.py", "import fastapi  # noqa: F401\n", "publisher library stands apart"),
        (
            "ingest/coalesce.py",
            "from facestream.ingest.http import liveness  # noqa: F401\n",
            "publisher library stands apart",
        ),
    ],
)
def test_a_violation_fails_the_check(tmp_path: Path, module: str, source: str, broken: str) -> None:
    tree = tree_copy(tmp_path)
    (tree / module).write_text(source)
    if module == "ingest/violation.py" and "gateway" in source:
        # A cycle needs the way back too: the gateway importing the new module.
        gateway = tree / "ingest" / "http" / "app.py"
        gateway.write_text(gateway.read_text() + "\nfrom facestream.ingest import violation\n")
    done = lint(tree)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout
    assert broken in done.stdout.split("Broken contracts")[1]


def test_every_other_detector_module_is_forbidden_to_the_model_code() -> None:
    """The contract lists the detector's modules by name: a new one must be added there."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (model,) = [c for c in contracts if c.get("source_modules") == ["facestream.detector.model"]]
    listed = {m for m in model["forbidden_modules"] if m.startswith("facestream.detector.")}
    present = {
        f"facestream.detector.{p.stem}"
        for p in (ROOT / "detector").glob("*.py")
        if p.stem != "__init__"
    }
    assert listed == present


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    tree = tree_copy(tmp_path / "tree")  # setuptools builds in the tree: not in the checkout
    shutil.copy(ROOT / "README.md", tree / "README.md")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(tree),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("facestream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"facestream"}
    for name in PACKAGES:
        assert f"facestream/{name}/__init__.py" in names
    assert "facestream/common/streams/lua/emit.lua" in names
    assert "facestream/common/cache/lua/cached_answers.lua" in names
    assert "facestream/detector/model/loader.py" in names
    assert "facestream/py.typed" in names  # the whole package typed for downstream mypy
    assert "facestream/ingest/http/static/index.html" in names  # the try-it page's files


PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation")


@pytest.mark.slow
def test_a_clone_without_symlinks_fails_the_build_loudly(tmp_path: Path) -> None:
    """With core.symlinks=false git writes each link as a text file holding its target; the
    build must stop and say so, not ship a wheel with only facestream/__init__.py."""
    tree = tmp_path / "tree"
    (tree / "facestream").mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copy(ROOT / "facestream" / "__init__.py", tree / "facestream" / "__init__.py")
    for name in PACKAGES:
        (tree / "facestream" / name).write_text(f"../{name}")  # what git writes for a link
    done = subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(tmp_path / "out"), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "this clone was made without symlinks" in done.stdout + done.stderr
    assert not list(tmp_path.rglob("*.whl"))


def _key_builders(path: Path) -> list[str]:
    """Calls of `<...keys>.cache(...)` / `<...keys>.lock(...)` in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if node.func.attr in ("cache", "lock") and name.endswith("keys"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_cache_package_names_cache_and_lock_keys() -> None:
    """The result cache has one owner (common/cache/, docs/architecture.md): a service that
    built a cache or lock key itself would be a second reader or writer of the format."""
    outside = [
        hit
        for name in PACKAGES
        for path in sorted((ROOT / name).rglob("*.py"))
        if "common/cache" not in path.as_posix()
        for hit in _key_builders(path)
    ]
    assert outside == []
    assert _key_builders(ROOT / "common/cache/lookup.py")  # the check sees what it looks for
