"""A face model: normalisation + runtime + decoder + NMS, from decoded images to faces."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from facestream.common.contract.schema import Face
from facestream.detector.model.backend import InferenceBackend
from facestream.detector.model.nms import nms
from facestream.detector.model.preprocess import Normalisation, to_tensor
from facestream.detector.model.resize import ResizeRule
from facestream.detector.model.types import Candidates, DecodedImage, Decoder


@dataclass(frozen=True, slots=True)
class Prepared:
    image: DecodedImage
    tensor: np.ndarray  # (3, H, W) float32, normalised and padded


@dataclass(frozen=True, slots=True)
class ModelSpec:
    family: str  # "retinaface" | "scrfd"
    name: str
    tag: str  # name + digest of weights and output-changing settings; in results and keys
    input_size: int | None  # long side the image is scaled to fit; None = native size
    norm: Normalisation
    score_threshold: float
    nms_iou: float
    max_faces: int | None  # None: every face NMS keeps
    # Letterbox: pad every image to one input_size square, so any images batch together.
    letterbox: bool = False
    # A graph with a fixed input (height, width): images are scaled to fit inside it and
    # padded to exactly it.
    fixed_shape: tuple[int, int] | None = None
    max_batch: int | None = None  # a graph with a fixed batch (1) takes no more per run
    resize: ResizeRule = "pillow"  # how decoding scales images (detector/model/resize.py)

    @property
    def fit(self) -> int | tuple[int, int] | None:
        """What decoding scales an image to fit: a long side, or a (width, height) box."""
        if self.fixed_shape is not None:
            return (self.fixed_shape[1], self.fixed_shape[0])
        return self.input_size

    def padded(self, height: int, width: int) -> tuple[int, int]:
        if self.fixed_shape is not None:
            return self.fixed_shape
        if self.letterbox and self.input_size is not None:
            return self.norm.padded(self.input_size, self.input_size)
        return self.norm.padded(height, width)


class FaceModel:
    def __init__(
        self,
        spec: ModelSpec,
        backend: InferenceBackend,
        decoder: Decoder,
        layout: dict[str, object] | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.decoder = decoder
        self.layout = layout or {}  # what the loader found in the graph (`model info`)

    @property
    def tag(self) -> str:
        return self.spec.tag

    def warm_up(self) -> None:
        """One run on a blank image: onnxruntime's first run allocates and plans, so the first
        real request is not the slow one."""
        size = self.spec.input_size or 640
        h, w = self.spec.fixed_shape or (size * 3 // 4, size)
        blank = np.zeros((h, w, 3), np.uint8)
        self.detect([DecodedImage(blank, w, h, 1.0, 1.0)])

    def prepare(self, image: DecodedImage) -> Prepared:
        """The network input for one image (normalised, padded): CPU work that decoding threads
        do, so the inference thread only runs the network."""
        shape = self.spec.padded(*image.pixels.shape[:2])
        return Prepared(image, to_tensor([image.pixels], self.spec.norm, shape)[0])

    def detect(self, images: list[DecodedImage]) -> list[list[Face]]:
        """Faces per image, in original-image pixels, best score first."""
        return self.detect_prepared([self.prepare(im) for im in images])

    def detect_prepared(self, items: list[Prepared]) -> list[list[Face]]:
        results: list[list[Face]] = [[] for _ in items]
        # One run per padded shape (a single shape with letterboxing): padding never depends on
        # what else is in the batch, so an image's faces are the same whatever it was batched
        # with (cache entries stay exact).
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[item.tensor.shape].append(i)
        step = self.spec.max_batch or len(items) or 1
        for (_, ph, pw), group in groups.items():
            for start in range(0, len(group), step):
                members = group[start : start + step]
                # One image (the CPU default): a view, not np.stack's copy of ~3.7 MB on the
                # inference thread, which is the one every miss waits for.
                tensor = (
                    items[members[0]].tensor[None]
                    if len(members) == 1
                    else np.stack([items[i].tensor for i in members])
                )
                outputs = self.backend.run(tensor)
                candidates = self.decoder.decode(outputs, ph, pw, self.spec.score_threshold)
                for i, cand in zip(members, candidates, strict=True):
                    results[i] = self._finish(cand, items[i].image)
        return results

    def _finish(self, cand: Candidates, image: DecodedImage) -> list[Face]:
        if len(cand.scores) == 0:
            return []
        boxes_in = cand.boxes
        if self.spec.family == "scrfd":
            # ModelScope clips SCRFD boxes to the (resized, unpadded) image before NMS, which
            # changes the overlaps NMS sees for faces cut by the image edge.
            h, w = image.pixels.shape[:2]
            boxes_in = np.clip(cand.boxes, 0, np.array([w, h, w, h], dtype=cand.boxes.dtype))
            cand = Candidates(boxes_in, cand.scores, cand.kps)
        keep = nms(boxes_in, cand.scores, self.spec.nms_iou)
        if self.spec.max_faces is not None:
            keep = keep[: self.spec.max_faces]
        scale = np.array([image.scale_x, image.scale_y], dtype=np.float64)
        boxes = cand.boxes[keep].astype(np.float64).reshape(-1, 2, 2) / scale
        kps = cand.kps[keep].astype(np.float64) / scale
        limit = np.array([image.width, image.height], dtype=np.float64)
        boxes = np.clip(boxes, 0, limit).reshape(-1, 4)
        scores = cand.scores[keep].astype(np.float64)
        return [
            Face(
                box=[round(float(v), 2) for v in box],
                score=round(float(score), 6),
                kps=[[round(float(x), 2), round(float(y), 2)] for x, y in pts],
            )
            for box, score, pts in zip(boxes, scores, kps, strict=True)
        ]
