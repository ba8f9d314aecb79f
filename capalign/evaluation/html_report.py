"""An HTML page for a comparison: one row per image (thumbnail, every system's caption and score, the
references), sortable in the browser by where the systems disagree most; plus a PNG bar chart."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any


from capalign.evaluation.stats import Row

THUMB = 160

_SCRIPT = """
function sortRows(key) {
  const body = document.getElementById('images');
  const rows = Array.from(body.rows);
  const desc = key !== 'id';
  rows.sort((a, b) => {
    const x = a.dataset[key], y = b.dataset[key];
    const nx = parseFloat(x), ny = parseFloat(y);
    const c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y, undefined, {numeric: true}) : nx - ny;
    return desc ? -c : c;
  });
  rows.forEach(r => body.appendChild(r));
}
document.addEventListener('DOMContentLoaded', () => sortRows('disagreement'));
"""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222} table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;font-size:14px} th{background:#f4f4f4}
.refs{color:#666;font-size:12px;margin:0;padding-left:1.2em} .score{color:#06c;font-size:12px}
img.thumb{width:%dpx;height:auto;image-rendering:pixelated} .sig{font-weight:bold}
""" % THUMB


def bar_chart(rows: list[Row], path: Path) -> None:
    """One bar panel per metric (own y scale), a bar per system with its 95% bootstrap interval."""
    import matplotlib  # deferred: matplotlib is slow to import; only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the headless backend

    metrics = list(dict.fromkeys(r.metric for r in rows))
    systems = list(dict.fromkeys(r.system for r in rows))
    by = {(r.metric, r.system): r for r in rows}
    cols = min(4, max(len(metrics), 1))
    nrows = -(-max(len(metrics), 1) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics):
        for k, system in enumerate(systems):
            r = by.get((metric, system))
            if r is None:
                continue
            err = None
            if r.ci_low is not None:
                err = [[max(r.value - r.ci_low, 0)], [max(r.ci_high - r.value, 0)]]
            ax.bar(k, r.value, yerr=err, capsize=3, color=colours[k % len(colours)])
        ax.set_title(metric, fontsize=10)
        ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right", fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle("metrics with 95% bootstrap intervals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _summary_table(rows: list[Row], first: str) -> str:
    head = f"<tr><th>metric</th><th>system</th><th>value</th><th>95% CI</th><th>Δ vs {html.escape(first)}</th><th>p</th><th>win / tie / loss</th></tr>"
    body = []
    for r in rows:
        ci = f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.ci_low is not None else "—"
        delta = _fmt(r.delta) + (f" [{_fmt(r.delta_low)}, {_fmt(r.delta_high)}]" if r.delta_low is not None else "")
        p = f'<span class="{"sig" if r.p_value is not None and r.p_value < 0.05 else ""}">{_fmt(r.p_value, 3)}</span>'
        wtl = f"{r.win:.0%} / {r.tie:.0%} / {r.loss:.0%}" if r.win is not None else ""
        body.append(f"<tr><td>{html.escape(r.metric)}</td><td>{html.escape(r.system)}</td><td>{_fmt(r.value)}</td>"
                    f"<td>{ci}</td><td>{delta}</td><td>{p}</td><td>{wtl}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def disagreement(scores: dict[str, dict[str, float]], captions: dict[str, dict[str, str]], ids: list[str],
                 metric: str | None) -> dict[str, float]:
    """Per image: spread (max - min) of the systems' `metric` scores; without a metric, the share of
    distinct captions among systems."""
    out = {}
    for i in ids:
        if metric is not None:
            values = [scores[s][i][metric] for s in scores if metric in scores[s].get(i, {})]
            out[i] = float(max(values) - min(values)) if values else 0.0
        else:
            texts = [captions[s][i].strip().lower() for s in captions]
            out[i] = (len(set(texts)) - 1) / max(len(texts) - 1, 1)
    return out


def write_report(
    out_dir: str | Path,
    rows: list[Row],
    captions: dict[str, dict[str, str]],
    references: dict[str, list[str]],
    per_image: dict[str, dict[str, dict[str, float]]],
    images: dict[str, Any] | None = None,
    metric: str | None = None,
    title: str = "capalign compare",
) -> Path:
    """Write index.html, metrics.png and thumbs/ into out_dir; return the HTML path.

    captions/per_image: system -> image id -> caption / {metric: score}; `metric` ranks disagreement.
    """
    out = Path(out_dir)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    systems = list(captions)
    ids = sorted(references, key=lambda i: (0, int(i), "") if i.isdigit() else (1, 0, i))
    bar_chart(rows, out / "metrics.png")
    spread = disagreement(per_image, captions, ids, metric)
    trs = []
    for n, image_id in enumerate(ids):
        thumb = ""
        if images and image_id in images:
            name = f"thumbs/{n:06d}.jpg"
            im = images[image_id].convert("RGB")
            im.thumbnail((THUMB * 2, THUMB * 2))
            im.save(out / name, quality=85)
            thumb = f'<img class="thumb" src="{name}" alt="{html.escape(image_id)}">'
        data = {"id": image_id, "disagreement": f"{spread[image_id]:.6f}"}
        cells = []
        for k, system in enumerate(systems):
            score = per_image.get(system, {}).get(image_id, {}).get(metric) if metric else None
            data[f"s{k}"] = "" if score is None else f"{score:.6f}"
            score_html = f'<div class="score">{html.escape(metric)} {score:.3f}</div>' if score is not None else ""
            cells.append(f"<td>{html.escape(captions[system].get(image_id, ''))}{score_html}</td>")
        refs = "".join(f"<li>{html.escape(r)}</li>" for r in references[image_id])
        attrs = " ".join(f'data-{k}="{html.escape(v)}"' for k, v in data.items())
        trs.append(f"<tr {attrs}><td>{thumb}<div>{html.escape(image_id)}</div></td>{''.join(cells)}"
                   f'<td><ol class="refs">{refs}</ol></td><td>{spread[image_id]:.3f}</td></tr>')
    options = ['<option value="disagreement">where systems disagree most</option>', '<option value="id">image id</option>']
    options += [f'<option value="s{k}">{html.escape(s)} {html.escape(metric)}</option>' for k, s in enumerate(systems) if metric]
    header = "".join(f"<th>{html.escape(s)}</th>" for s in systems)
    spread_name = f"{metric} spread" if metric else "caption disagreement"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(ids)} images, systems: {', '.join(html.escape(s) for s in systems)}. First system is the baseline for Δ, p and win rates.</p>
{_summary_table(rows, systems[0])}
<p><img src="metrics.png" alt="metrics bar chart" style="max-width:100%"></p>
<p>Sort images by <select onchange="sortRows(this.value)">{''.join(options)}</select></p>
<table><thead><tr><th>image</th>{header}<th>references</th><th>{html.escape(spread_name)}</th></tr></thead>
<tbody id="images">{''.join(trs)}</tbody></table>
</body></html>"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
