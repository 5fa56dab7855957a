"""QPS and p99 latency against users, both systems, two panels: the side-by-side at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on the benchmark machines
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from benchmarks.sidebyside import Point

STYLE = {"old design": ("tab:gray", "s"), "facestream": ("tab:blue", "o")}


def plot(points: list[Point], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for system, (color, marker) in STYLE.items():
        mine = sorted(
            (p for p in points if p.system == system and p.scenario == "published"),
            key=lambda p: p.users,
        )
        if not mine:
            continue
        users = [p.users for p in mine]
        left.plot(users, [p.qps for p in mine], marker=marker, color=color, label=system)
        right.plot(users, [p.p99_ms for p in mine], marker=marker, color=color, label=system)
        hits = sorted(
            (p for p in points if p.system == system and p.scenario == "all hits"),
            key=lambda p: p.users,
        )
        if hits:
            style = {"marker": marker, "color": color, "linestyle": ":", "alpha": 0.7}
            label = f"{system}, all hits"
            left.plot([p.users for p in hits], [p.qps for p in hits], **style, label=label)
            right.plot([p.users for p in hits], [p.p99_ms for p in hits], **style, label=label)
    left.set(title="Throughput", xlabel="concurrent users", ylabel="requests / s")
    right.set(title="p99 latency", xlabel="concurrent users", ylabel="ms")
    users_seen = sorted({p.users for p in points})
    for ax in (left, right):
        ax.set_xticks(users_seen)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Published scenario (the table's miss rate per point), same machine, same client")
    fig.savefig(path, dpi=120)
    plt.close(fig)
