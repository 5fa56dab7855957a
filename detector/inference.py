"""Images to faces for the detector: decoding and pre-processing on a thread pool, then the
dynamic batcher's model calls (onnxruntime releases the GIL, so both overlap the event loop)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from facestream.common.contract.schema import Face, SchemaError
from facestream.common.settings import DetectorSettings
from facestream.detector import metrics
from facestream.detector.batcher import DynamicBatcher
from facestream.detector.imaging import decode_image
from facestream.detector.model.face_model import FaceModel, Prepared
from facestream.detector.model.types import DecodedImage

InferenceAnswer = tuple[DecodedImage, list[Face]] | SchemaError


class Inference:
    def __init__(self, settings: DetectorSettings, model: FaceModel) -> None:
        self.settings = settings
        self.model = model
        self.decode_pool = ThreadPoolExecutor(settings.decode_threads, "decode")
        on_gpu = model.backend.provider.startswith("CUDA")
        self.max_batch = settings.max_batch or (16 if on_gpu else 1)
        if model.spec.max_batch is not None:  # a graph exported with a fixed batch
            self.max_batch = min(self.max_batch, model.spec.max_batch)
        self.batcher = DynamicBatcher(model, self.max_batch, settings.max_batch_wait_ms)

    def _decode(self, data: bytes, since: float) -> tuple[Prepared | SchemaError, float]:
        """Decoded and pre-processed, or why not; and when (its `decode` stage, from `since`:
        the wait for a decode thread included, ends then)."""
        prepared = self._prepare(data)
        ready = time.perf_counter()
        metrics.STAGE_DECODE.observe(ready - since)
        return prepared, ready

    def _prepare(self, data: bytes) -> Prepared | SchemaError:
        spec = self.model.spec
        try:
            image = decode_image(
                data,
                max_bytes=self.settings.max_image_bytes,
                max_pixels=self.settings.max_pixels,
                max_side=spec.fit,
                upscale=spec.norm.upscale,
                resize=spec.resize,
                max_scans=self.settings.max_jpeg_scans,
            )
        except SchemaError as err:
            return err
        return self.model.prepare(image)

    async def detect(
        self, images: list[tuple[str, bytes]], model_done: dict[str, float] | None = None
    ) -> dict[str, InferenceAnswer]:
        """(sha256, image bytes) -> the decoded image and its faces, or why it has none;
        `model_done` gets, per image the model ran on, when its call ended (perf_counter: the
        caller's `write` stage starts there)."""
        loop = asyncio.get_running_loop()
        since = time.perf_counter()
        decoded = await asyncio.gather(
            *(
                loop.run_in_executor(self.decode_pool, self._decode, data, since)
                for _, data in images
            )
        )
        out: dict[str, InferenceAnswer] = {}
        ok: dict[str, tuple[Prepared, float]] = {}
        for (sha, _), (image, ready) in zip(images, decoded, strict=True):
            if isinstance(image, SchemaError):
                out[sha] = image
            else:
                ok[sha] = (image, ready)
        if ok:
            prepared = [item for item, _ in ok.values()]
            found = await self.batcher.detect_timed(prepared, [ready for _, ready in ok.values()])
            for (sha, (item, _)), (faces, ended) in zip(ok.items(), found, strict=True):
                out[sha] = (item.image, faces)
                if model_done is not None:
                    model_done[sha] = ended
        return out

    def close(self) -> None:
        self.decode_pool.shutdown(wait=True, cancel_futures=False)
        self.batcher.close()
