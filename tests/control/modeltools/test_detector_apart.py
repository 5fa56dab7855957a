"""A detector imports none of the offline model tooling (control/modeltools: export, quantize,
fetch, eval) nor the extras only that tooling needs: checked on a real detector process's
modules after it has loaded its model, and by import-linter on a tree that breaks the rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ROOT
from tests.system.test_architecture import lint, tree_copy

# What a detector process imports: its entry module and worker, then the model loaded as at
# start (the built-in one: the int8 copy's manifest reader is in the same loader module).
PROBE = """
import json, sys
import facestream.detector.__main__, facestream.detector.worker
from facestream.common.settings import Settings
from facestream.detector.model.loader import load_model
load_model(Settings(model="builtin"))
print(json.dumps(sorted(sys.modules)))
"""
TOOLING_PACKAGES = ("torch", "modelscope", "scipy", "onnxruntime.quantization", "skimage")
TOOLING_WORDS = ("modeltools", "quantize", "damofd", "export", "evaluation")


def test_a_detector_process_imports_none_of_the_tooling() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    assert "facestream.detector.model.loader" in modules  # the probe did load a model
    tooling = [
        m
        for m in modules
        if any(m == p or m.startswith(p + ".") for p in TOOLING_PACKAGES)
        or (m.startswith("facestream.") and any(w in m for w in TOOLING_WORDS))
        or m.startswith("facestream.control")
    ]
    assert tooling == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("detector/violation.py", "from facestream.control.modeltools import quantize  # noqa\n"),
        ("detector/model/violation.py", "def f() -> None:\n    import torch  # noqa: F401\n"),
    ],
)
def test_a_detector_importing_the_tooling_fails_the_check(
    tmp_path: Path, module: str, source: str
) -> None:
    tree = tree_copy(tmp_path)
    (tree / module).write_text(source)
    done = lint(tree)
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts")[1]
    assert "a detector imports none of the offline model tooling" in broken
