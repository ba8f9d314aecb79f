"""Learning-curve PNG from metrics.jsonl (matplotlib, headless Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_curves(metrics_path: Path, out: Path) -> None:
    """Plot every numeric series against step: training losses left, validation right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    series: dict[str, tuple[list, list]] = {}
    for record in records:
        for key, value in record.items():
            if key in ("step", "epoch", "lr", "samples_per_s") or not isinstance(value, (int, float)):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(record["step"])
            ys.append(value)
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, (xs, ys) in series.items():
        (val_ax if key.startswith("val") else train_ax).plot(xs, ys, label=key)
    for ax, title in ((train_ax, "training"), (val_ax, "validation")):
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(out)
