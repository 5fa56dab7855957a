"""The schema of a registry entry (`entry.json`): every field's type and range, checked before
a detector uses any of it.

An entry drives the decoder and the pre-processing directly, so a value of the wrong type or
out of range does not fail at load on its own: a stride of 0.01 or `true`, a string mean or a
NaN std used to load and then fail every inference. Validation is strict (JSON `true` is not
a number, `"640"` is not an integer) and every violation is reported on one line.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FORMAT_VERSION = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# Pixel values are 0..255; a mean or std far outside that is a broken export, not a model.
Mean = Annotated[float, Field(ge=-1024, le=1024)]
Std = Annotated[float, Field(gt=0, le=1024)]
# The stride of a feature map over the input: the decoder places anchors at x * stride.
Stride = Annotated[int, Field(ge=1, le=1024)]


class EntrySchema(BaseModel):
    """What `entry.json` must hold (docs/models.md, "The registry"); unknown keys are ignored."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore", frozen=True)

    format_version: Literal[1]
    name: str = Field(pattern=NAME_PATTERN)
    family: Literal["scrfd"]
    source: str = Field(max_length=512)
    input_size: int = Field(ge=32, le=4096)
    bgr: bool
    mean: tuple[Mean, Mean, Mean]
    std: tuple[Std, Std, Std]
    pad_square: bool
    strides: tuple[Stride, ...] = Field(min_length=1, max_length=8)
    anchors_per_cell: int = Field(ge=1, le=16)
    sigmoid_in_graph: bool
    score_threshold: float = Field(ge=0, le=1)
    nms_iou: float = Field(gt=0, le=1)
    weights_sha256: str = Field(pattern=SHA256_PATTERN)
    onnx_sha256: str = Field(pattern=SHA256_PATTERN)
    exporter: dict[str, str] = Field(default_factory=dict)
    check: dict[str, Any] = Field(default_factory=dict)
    # Where a download came from (null when installed from a local copy; revision null: the
    # hub's default revision at fetch time).
    model_id: str | None = Field(default=None, max_length=256)
    revision: str | None = Field(default=None, max_length=256)

    @field_validator("strides")
    @classmethod
    def distinct(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        # The decoder matches one output per stride: a repeated stride has no output of its own.
        if len(set(value)) != len(value):
            raise ValueError("strides must be distinct")
        return value


def describe(exc: ValidationError) -> str:
    """All the violations on one line: `field: problem (got value)`, separated by `; `."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        message = str(err["msg"])
        if err["type"] == "missing" and loc and isinstance(loc[-1], int):
            # A tuple too short: "std.2: Field required" reads as if a key were missing.
            message = f"item {loc.pop()} missing (one value per channel)"
        where = ".".join(str(p) for p in loc) or "entry"
        if err["type"] != "missing" and "input" in err:
            message += f" (got {_short(err['input'])})"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
