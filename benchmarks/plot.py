"""The side-by-side at a glance: QPS and p99 latency against closed-loop users, both systems,
and (when the open loop ran) p99 against offered rate with the bound."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on the benchmark machines
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from benchmarks.capacity import Bound, RatePoint
    from benchmarks.sidebyside import Point

STYLE = {"old design": ("tab:gray", "s"), "facestream": ("tab:blue", "o")}


def plot(
    points: list[Point],
    path: Path,
    rates: list[RatePoint] | None = None,
    bound: Bound | None = None,
) -> None:
    panels = (2 if points else 0) + (1 if rates else 0)
    if not panels:
        return
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), constrained_layout=True)
    axes = list(axes) if panels > 1 else [axes]
    if rates:
        _rates(axes.pop(), rates, bound)
    if points:
        _closed(axes[0], axes[1], points)
    shown = ["closed loop at the table's miss rate per point"] if points else []
    shown += ["open loop (Poisson arrivals) against offered rate"] if rates else []
    # One panel is too narrow for the title on one line.
    fig.suptitle(("Same machine, same client:" + ("\n" if panels == 1 else " ")) + "; ".join(shown))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _rates(ax: Axes, rates: list[RatePoint], bound: Bound | None) -> None:
    for system, (color, marker) in STYLE.items():
        mine = sorted((p for p in rates if p.system == system), key=lambda p: p.offered)
        if not mine:
            continue
        offered = [p.offered for p in mine]
        ax.plot(offered, [p.p99_ms for p in mine], marker=marker, color=color, label=system)
        new = [p.classes["new"].p99_ms if p.classes["new"].n else float("nan") for p in mine]
        ax.plot(
            offered,
            new,
            marker=marker,
            color=color,
            linestyle="--",
            alpha=0.6,
            label=f"{system}, new photos",
        )
    if bound:
        ax.axhline(bound.p99_ms, color="tab:red", linewidth=0.8, label="bound: p99")
        ax.axhline(
            bound.new_p99_ms,
            color="tab:red",
            linewidth=0.8,
            linestyle="--",
            label="bound: new photos p99",
        )
    ax.set(title="Open loop: p99 latency", xlabel="offered requests / s", ylabel="ms")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _closed(left: Axes, right: Axes, points: list[Point]) -> None:
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
    left.set(title="Closed loop: throughput", xlabel="concurrent users", ylabel="requests / s")
    right.set(title="Closed loop: p99 latency", xlabel="concurrent users", ylabel="ms")
    users_seen = sorted({p.users for p in points})
    for ax in (left, right):
        ax.set_xticks(users_seen)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
