"""`facestream model eval DIR`: a model's accuracy on WIDER FACE val by the official protocol
(AP per subset, control/modeltools/evaluation/protocol.py) and, with landmark ground truth, the
NME of its five points, run exactly as a detector serves the model (docs/models.md, "Accuracy")."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from facestream.common.progress import Progress
from facestream.common.settings import Settings

DEFAULT_SCORE_THRESHOLD = 0.02


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        help="a directory laid out as WIDER FACE val: WIDER_val/images/<event>/<name>.jpg and "
        "wider_face_split/ (and eval_tools/ground_truth/ for easy / medium / hard)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME|PATH",
        help="a name or a path to an .onnx (default FACESTREAM_MODEL)",
    )
    parser.add_argument(
        "--gt-dir", metavar="DIR", help="where the .mat / .txt ground truth is, if elsewhere"
    )
    parser.add_argument(
        "--landmarks",
        metavar="FILE",
        help="RetinaFace's label.txt with five landmarks per face (default: a label.txt found "
        "in DIR); adds the NME of the five points",
    )
    parser.add_argument("--limit", type=_positive, metavar="N", help="evaluate at most N images")
    parser.add_argument(
        "--every", type=_positive, default=1, metavar="K", help="every K-th image (default 1)"
    )
    parser.add_argument(
        "--score-threshold",
        type=_unit,
        metavar="T",
        default=DEFAULT_SCORE_THRESHOLD,
        help="keep faces scoring at least this for the PR curve (default "
        f"{DEFAULT_SCORE_THRESHOLD}: the protocol needs the low-score end of the curve)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _unit(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be in [0, 1]")
    return value


def run(args: argparse.Namespace, settings: Settings) -> int:
    from facestream.control.modeltools.evaluation import landmarks, protocol, runner, widerface
    from facestream.detector.model.face_model import FaceModel
    from facestream.detector.model.loader import load_model

    root = Path(args.dataset).expanduser()
    truth = widerface.find_ground_truth(
        root, Path(args.gt_dir).expanduser() if args.gt_dir else None
    )
    images_root = widerface.images_dir(root)
    chosen = list(widerface.select(truth.images, args.every, args.limit))
    if not chosen:
        raise widerface.GroundTruthError("no image selected (the ground truth lists none)")
    paths = [images_root / image.name for image in chosen]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise widerface.GroundTruthError(
            f"{len(missing)} of {len(paths)} images missing under {images_root}, e.g. "
            f"{missing[0].relative_to(images_root)}"
        )
    label_path = (
        Path(args.landmarks).expanduser() if args.landmarks else landmarks.find_labels(root)
    )
    labels = landmarks.read_labels(label_path) if label_path is not None else None

    served = load_model(settings.model_copy(update={"model": args.model or settings.model}))
    # The same graph, decoder, resize and NMS; only the threshold lowered for the curve.
    spec = dataclasses.replace(served.spec, score_threshold=args.score_threshold)
    model = FaceModel(spec, served.backend, served.decoder, served.layout)
    progress = Progress(len(paths), f"eval {served.spec.name}")
    try:
        done = runner.run(model, settings, paths, lambda: progress.advance(1))
    finally:
        progress.close()
    results = protocol.evaluate(done.predictions, chosen, truth.subsets)
    report: dict[str, Any] = {
        "model": served.spec.name,
        "tag": served.tag,
        "dataset": str(root),
        "ground_truth": truth.source,
        "note": truth.note,
        "score_threshold": args.score_threshold,
        "images": len(paths),
        "every": args.every,
        "limit": args.limit,
        "seconds": round(done.seconds, 3),
        "images_per_s": round(len(paths) / done.seconds, 2) if done.seconds > 0 else None,
        "refused": done.refused,
        "subsets": {
            name: {"ap": _number(r.ap), "faces": r.faces, "recall": _number(r.recall)}
            for name, r in results.items()
        },
    }
    if labels is not None:
        found = landmarks.nme(
            done.predictions, [labels.get(i.name) for i in chosen], served.spec.score_threshold
        )
        report["landmarks"] = {
            "file": str(label_path),
            "nme": _number(found.nme),
            "faces": found.faces,
            "annotated": found.annotated,
            "min_score": served.spec.score_threshold,
            "per_point": [_number(v) for v in found.per_point],
        }
    if args.json:
        print(json.dumps(report))
    else:
        _table(report)
    return 0


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _table(report: dict[str, Any]) -> None:
    subset = "every image" if report["every"] == 1 else f"one image in {report['every']}"
    limit = f", at most {report['limit']}" if report["limit"] else ""
    print(f"model {report['model']} (tag {report['tag']}) on {report['dataset']}")
    print(f"ground truth: {', '.join(report['ground_truth'])}")
    if report["note"]:
        print(f"note: {report['note']}")
    print(
        f"{report['images']} images ({subset}{limit}), "
        f"{report['images_per_s']} images/s, faces scoring >= {report['score_threshold']}"
    )
    print(f"{'subset':<8} {'AP %':>7} {'recall':>7} {'faces':>7}")
    for name, row in report["subsets"].items():
        ap = "-" if row["ap"] is None else f"{100 * row['ap']:.2f}"
        recall = "-" if row["recall"] is None else f"{100 * row['recall']:.2f}"
        print(f"{name:<8} {ap:>7} {recall:>7} {row['faces']:>7}")
    marks = report.get("landmarks")
    if marks is not None:
        value = "-" if marks["nme"] is None else f"{100 * marks['nme']:.2f} %"
        print(
            f"landmarks NME (/ sqrt(w*h) of the true box): {value} over {marks['faces']} "
            f"matched of {marks['annotated']} annotated faces (faces scoring >= "
            f"{marks['min_score']}, as served)"
        )
    for path, why in report["refused"].items():
        print(f"refused (scored as no faces): {path}: {why}", file=sys.stderr)
