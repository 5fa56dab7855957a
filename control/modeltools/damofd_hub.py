"""Where `facestream model fetch damofd` finds DamoFD's checkpoint: ModelScope's hub, under
each name and revision the model is published under, or a copy already downloaded
(`--from-dir`) in any layout ModelScope's clients write; and the checkpoint read as data.

The hub is reached through one function, `Hub` (ModelScope's `snapshot_download` by default),
so the order of the names and revisions tried can be tested without the hub.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facestream.common.log import get_logger

# The model moved from the `damo` namespace to `iic` on the hub; both names serve it.
MODEL_IDS = (
    "damo/cv_ddsar_face-detection_iclr23-damofd",
    "iic/cv_ddsar_face-detection_iclr23-damofd",
)
# A tag first, so a re-published snapshot never changes what is installed silently: public
# scripts load this model at v1.1. None is the hub's default revision (master, or the newest
# release the installed modelscope client accepts), tried when no name has that tag.
REVISIONS: tuple[str | None, ...] = ("v1.1", None)
CONFIG = "configuration.json"  # ModelScope's: its model type must be damofd
MODEL_CONFIG = "DamoFD_lms.py"  # mmdet-style config: present in a real snapshot, never executed
CHECKPOINT = "pytorch_model.pt"  # a dict with `state_dict` (or the state dict itself)
MODEL_TYPE = "damofd"
OFFLINE_HINT = (
    "Without internet, fetch on a machine that has it and copy the installed directory, or "
    "pass a downloaded copy with --from-dir (docs/models.md)"
)

log = get_logger(__name__)
# (model id, revision or None for the hub's default, cache dir or None) -> snapshot directory
Hub = Callable[[str, str | None, Path | None], str]


class FetchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Candidate:
    model_id: str
    revision: str | None  # None: the hub's default

    def __str__(self) -> str:
        return f"{self.model_id}@{self.revision or '(hub default)'}"


def candidates(model_id: str | None = None, revision: str | None = None) -> list[Candidate]:
    """What to try, in order: every published name at v1.1, then at the hub's default; a
    name or revision the user chose replaces the list it would come from."""
    ids = (model_id,) if model_id else MODEL_IDS
    revisions = (revision,) if revision else REVISIONS
    return [Candidate(m, r) for r in revisions for m in ids]


def modelscope_hub(model_id: str, revision: str | None, cache_dir: Path | None) -> str:
    from modelscope.hub.snapshot_download import snapshot_download

    kwargs: dict[str, Any] = {"cache_dir": str(cache_dir)} if cache_dir else {}
    if revision:
        kwargs["revision"] = revision
    return str(snapshot_download(model_id, **kwargs))


def is_not_found(exc: BaseException) -> bool:
    """The hub's answer that this name has no such model or revision (the next may have it),
    as opposed to no network, no permission or a broken download (the next would fail too)."""
    try:
        from modelscope.hub.errors import NotExistError
    except ImportError:  # a fake hub in tests, without modelscope
        NotExistError = None
    if NotExistError is not None and isinstance(exc, NotExistError):
        return True
    # Older clients raise requests' HTTPError for an unknown model.
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status == 404


def download(
    tries: list[Candidate], cache_dir: Path | None, hub: Hub = modelscope_hub
) -> tuple[Candidate, Path]:
    """The first candidate the hub has, and where it was downloaded."""
    answers: list[str] = []
    for candidate in tries:
        log.info("damofd_download", model_id=candidate.model_id, revision=candidate.revision)
        try:
            path = hub(candidate.model_id, candidate.revision, cache_dir)
        except Exception as exc:
            if not is_not_found(exc):
                raise FetchError(
                    f"downloading {candidate} from ModelScope failed: {_line(exc)}. {OFFLINE_HINT}"
                ) from None
            log.info("damofd_not_on_hub", model_id=candidate.model_id, revision=candidate.revision)
            answers.append(f"{candidate} ({_line(exc)})")
            continue
        return candidate, Path(path)
    raise FetchError(
        f"ModelScope has none of the {len(tries)} tried: {'; '.join(answers)}. "
        "Name another with --model-id / --revision, or pass a downloaded copy with --from-dir"
    )


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def locate(source: Path) -> Path:
    """The snapshot in `source`: `source` itself, or the one copy of the model in a ModelScope
    cache directory (the cache root, or the model's own folder in it)."""
    if (source / CONFIG).is_file():
        return source
    if not source.is_dir():
        raise FetchError(f"{source}: not a directory")
    found = sorted({p for p in _cache_layouts(source) if (p / CONFIG).is_file()})
    if len(found) == 1:
        log.info("damofd_snapshot_found", path=str(found[0]))
        return found[0]
    if found:
        raise FetchError(
            f"{source}: {len(found)} copies of the model ({', '.join(map(str, found))}); "
            "pass the one to install with --from-dir"
        )
    raise FetchError(
        f"{source}: no {CONFIG}, and no ModelScope cache of {MODEL_IDS[0]} in it; "
        "not a snapshot of the model"
    )


def _cache_layouts(root: Path) -> Iterator[Path]:
    # modelscope <= 1.37 keeps <cache>/[models/]<owner>/<name>; modelscope-hub (>= 1.38)
    # <cache>/models/<owner>--<name>/snapshots/<revision>. Their default cache is
    # ~/.cache/modelscope/hub, so a copy of ~/.cache/modelscope works too.
    yield from _snapshots(root)
    for model_id in MODEL_IDS:
        owner, name = model_id.split("/")
        for base in (root, root / "hub", root / "models", root / "hub" / "models"):
            yield base / owner / name
            yield from _snapshots(base / f"{owner}--{name}")


def _snapshots(folder: Path) -> Iterator[Path]:
    snapshots = folder / "snapshots"
    if snapshots.is_dir():
        yield from (p for p in snapshots.iterdir() if p.is_dir())


def read_snapshot(source: Path) -> dict[str, Any]:
    """The checkpoint's state dict, after checking the snapshot is DamoFD's."""
    import torch

    for name in (CONFIG, CHECKPOINT):
        if not (source / name).is_file():
            raise FetchError(f"{source}: no {name}; not a snapshot of {MODEL_IDS[0]}")
    try:
        config = json.loads((source / CONFIG).read_text(encoding="utf-8"))
        kind = config.get("model", {}).get("type")
    except (ValueError, AttributeError) as exc:
        raise FetchError(f"{source / CONFIG}: unreadable: {exc}") from None
    if kind != MODEL_TYPE:
        raise FetchError(f"{source / CONFIG}: model type {kind!r}, expected {MODEL_TYPE!r}")
    try:
        # Tensors and plain containers only: a checkpoint is data, never code to run.
        checkpoint = torch.load(source / CHECKPOINT, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FetchError(f"{source / CHECKPOINT}: not a loadable checkpoint: {exc}") from None
    # mmcv's load_checkpoint takes `state_dict` when there is one, else the dict itself.
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise FetchError(f"{source / CHECKPOINT}: no state_dict in the checkpoint")
    return state
