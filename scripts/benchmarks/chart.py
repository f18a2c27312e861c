"""The side-by-side ratios of a bench.json as a PNG bar chart (matplotlib).

Each bar is the node's figure against another server's in the same run, always as "the node's
time over theirs" (rates are inverted): below 1 the node is faster. `python -m
scripts.benchmarks.chart bench-results/bench.json docs/bench.png` redraws a saved run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

RATES = ("images/s", "MB/s", "per s")
SKIP = ("matches", "RSS", ", %", "load, s", "cost", "bulk fill", "in the index")


def ratios(results: dict[str, dict[str, float]]) -> list[tuple[str, float]]:
    """(label, node time / other time) for every metric two servers of one group both have."""
    groups: dict[str, dict[str, dict[str, float]]] = {}
    for key, figures in results.items():
        group, _, server = key.rpartition(": ")
        groups.setdefault(group or "ingest", {})[server] = figures
    out = []
    for group, servers in groups.items():
        mine = servers.get("dicomnode")
        if not mine:
            continue
        for other, theirs in servers.items():
            if other == "dicomnode" or other.startswith("dicomnode"):
                continue
            for metric, value in mine.items():
                ref = theirs.get(metric)
                if not ref or not value or any(s in metric for s in SKIP):
                    continue
                ratio = ref / value if any(metric.endswith(r) for r in RATES) else value / ref
                out.append((f"{group}: {metric.removesuffix(', s').removesuffix(', ms')} vs {other}", ratio))
    return out


def chart(results: dict[str, dict[str, float]], out: Path, when: str = "") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = ratios(results)
    if not bars:
        return None
    bars.reverse()
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(bars) + 1.6))
    colors = ["#2e7d32" if r <= 1 else "#c62828" for _, r in bars]
    ax.barh([label for label, _ in bars], [r for _, r in bars], color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    lo = min(r for _, r in bars)
    hi = max(r for _, r in bars)
    ax.set_xlim(10 ** math.floor(math.log10(min(lo, 0.9))), 10 ** math.ceil(math.log10(max(hi, 1.1))))
    for i, (_, r) in enumerate(bars):
        ax.text(r, i, f" {r:.2f}x", va="center", fontsize=8)
    ax.set_xlabel("dicomnode's time / the other's time (rates inverted); below 1: dicomnode is faster")
    ax.set_title(f"scripts/bench, side by side in one run{f' ({when})' if when else ''}")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    data: dict[str, Any] = json.loads(Path(argv[0]).read_text())
    print(chart(data["results"], Path(argv[1]), data.get("when", "")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
