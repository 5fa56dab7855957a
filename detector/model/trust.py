"""How far a model's files are trusted before onnxruntime sees them (docs/models.md, "What is
trusted").

A model directory decides what a detector computes and, through ONNX external data, which
files onnxruntime reads. So: a graph must be one self-contained file (no external data); the
registry and each model's directory and files must be owned by root or by the user the
detector runs as, and not writable by anyone else; and nothing in a model's directory may be
a symbolic link leading out of the registry. `FACESTREAM_MODEL_DIR_TRUST=any` turns the owner
and permission checks off (never the other two), for volumes whose owner the host decides.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import onnx

TrustMode = Literal["owner", "any"]
OVERRIDE = "FACESTREAM_MODEL_DIR_TRUST=any"


class TrustError(RuntimeError):
    """A model file or directory facestream will not read; the message is one line."""


def inside(root: Path, path: Path) -> Path:
    """`path` with its symbolic links resolved, refused unless it stays inside `root` (itself
    resolved: a registry reached through a link is the operator's choice)."""
    real_root = root.resolve()
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise TrustError(f"{path}: missing or a broken symbolic link") from None
    except (OSError, RuntimeError) as exc:  # a link loop, a directory we may not enter
        raise TrustError(f"{path}: cannot be resolved: {exc}") from None
    if real != real_root and not real.is_relative_to(real_root):
        raise TrustError(
            f"{path}: a symbolic link to {real}, outside the model directory {real_root}; "
            "copy the files in instead of linking them"
        )
    return real


def check_owner(path: Path, mode: TrustMode) -> None:
    """Refuses a file or directory that another user could change: owned by someone else than
    root or this process's user (unless on a read-only mount), or group- or world-writable
    (a group-writable one is fine when the group is its owner's own private group)."""
    if mode == "any" or not hasattr(os, "geteuid"):
        return
    try:
        st = path.stat()
    except OSError as exc:
        raise TrustError(f"{path}: cannot be read: {exc.strerror}") from None
    me = os.geteuid()
    problems, fixes = [], []
    if st.st_uid not in (0, me) and not _read_only_mount(path):
        problems.append(f"owned by {_user(st.st_uid)}, not by root or {_user(me)}")
        fixes.append(f"`chown -R {_login(me)} {path}`")
    if st.st_mode & stat.S_IWOTH:
        problems.append("writable by every user")
    elif st.st_mode & stat.S_IWGRP and not _private_group(st):
        problems.append(f"writable by group {_group(st.st_gid)}")
    if len(problems) > len(fixes):
        fixes.append(f"`chmod -R go-w {path}`")
    if problems:
        raise TrustError(
            f"{path}: {' and '.join(problems)}, so another user could change the model a "
            f"detector serves; {' and '.join(fixes)} (or {OVERRIDE} to accept it: "
            "docs/models.md)"
        )


def check_model_dir(root: Path, name: str, files: tuple[str, ...], mode: TrustMode) -> Path:
    """The registry, the model's directory `root/name` and its `files` (those present) checked:
    each inside the registry and trusted. Returns the model's resolved directory."""
    check_owner(root, mode)
    folder = inside(root, root / name)
    if not folder.is_dir():
        raise TrustError(f"{root / name}: not a directory")
    check_owner(folder, mode)
    for file in files:
        path = root / name / file
        if path.is_symlink() or path.exists():
            check_owner(inside(root, path), mode)
    return folder


def external_tensors(proto: onnx.ModelProto) -> Iterator[tuple[str, str]]:
    """(tensor name, location) of each tensor whose bytes live in another file, anywhere in the
    model: initializers, constants, sparse tensors, subgraphs and local functions."""
    graphs = [proto.graph]
    nodes = [n for f in proto.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            nodes.extend(graph.node)
            yield from _tensors(list(graph.initializer), list(graph.sparse_initializer))
            continue
        node = nodes.pop()
        for attr in node.attribute:
            tensors = [attr.t, *attr.tensors] if attr.HasField("t") else list(attr.tensors)
            sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            yield from _tensors(tensors, [*sparse, *attr.sparse_tensors])
            graphs.extend([attr.g] if attr.HasField("g") else [])
            graphs.extend(attr.graphs)


def refuse_external_data(proto: onnx.ModelProto, name: str) -> None:
    """No supported model stores tensors outside its graph file, and onnxruntime resolves such
    a location against the working directory of a graph loaded from bytes: any readable file
    could become weights (or, through the outputs, leak as keypoints)."""
    for tensor, location in external_tensors(proto):
        raise TrustError(
            f"{name}: tensor {tensor!r} keeps its data in another file ({location!r}); "
            "facestream serves only self-contained ONNX files (save the graph without "
            "external data)"
        )


def _tensors(
    dense: list[onnx.TensorProto], sparse: list[onnx.SparseTensorProto]
) -> Iterator[tuple[str, str]]:
    for t in [*dense, *(s.values for s in sparse), *(s.indices for s in sparse)]:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            where = {e.key: e.value for e in t.external_data}.get("location", "")
            yield t.name, where


def _read_only_mount(path: Path) -> bool:
    # Nobody on this machine can change a read-only mount (compose mounts /models `:ro`): its
    # files' owner is the host's, which a container cannot match.
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _private_group(st: os.stat_result) -> bool:
    """The owner's own group with no other member (Debian's user private groups, umask 002)."""
    try:
        owner, group = pwd.getpwuid(st.st_uid), grp.getgrgid(st.st_gid)
    except KeyError:
        return False
    return (
        owner.pw_gid == st.st_gid
        and group.gr_name == owner.pw_name
        and set(group.gr_mem) <= {owner.pw_name}
    )


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _login(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"
