"""The run's report page: one self-contained static HTML document, rendered from data.

:func:`render_report` turns the evaluate stage's metrics, the fine-tuning log and the sampled covers
(as data URIs) into the page; the report stage (:mod:`icg_core.stages.report`) reads and writes them
(docs/architecture.md, "Evaluation": a person looks at covers, not only numbers). The page has no external references: CSS is inline, covers are
downscaled and embedded as base64 data URIs, plots are matplotlib PNGs embedded the same way, so
the single object works when opened straight from S3 or a laptop's disk.

Everything that comes from data (titles, versions, keys) is HTML-escaped. Missing optional fields
render as ``n/a``; a cover that cannot be read becomes a visible "missing" cell, not a broken page.
A small inline script records on ``<body>`` how many images loaded (``data-images-loaded`` /
``data-images-broken``), which the headless-browser test reads.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

log = logging.getLogger(__name__)


# Table rows in reading order (baselines first, full method last); unknown variants follow.
VARIANT_LABELS = {
    "reference": "Reference covers",
    "selection": "Best-variant selection",
    "base": "Base generator (stage 1)",
    "icg_no_preference": "ICG without preference reward",
    "icg_no_aesthetic": "ICG without aesthetic reward",
    "icg_unguided": "ICG without reward guidance",
    "icg": "ICG (full)",
    "challenger": "Challenger: tonight's fine-tune",
    "oracle_best": "Ceiling: best world-drawn cover (oracle)",
}
# Ablation table columns: (metric key, header, which direction is better: +1 higher, -1 lower, 0 none).
METRIC_COLUMNS = [
    ("aesthetic", "Aesthetic", 1),
    ("aesthetic_heldout", "Held-out aesthetic", 1),
    ("relevance", "Relevance", 1),
    ("item_recall_1", "Item recall@1", 1),
    ("category_top1", "Category top\u20111", 1),  # a non-breaking hyphen: "top-" never ends a line
    ("preference", "Preference score", 1),
    ("oracle_ctr", "Oracle CTR", 1),
    ("diversity", "Diversity", 1),
    ("seconds_per_cover", "Seconds / cover", -1),
    ("n_covers", "Covers", 0),
]
SHEET_COLUMNS = ["reference", "selection", "base", "icg", "oracle_best"]  # then other sampled variants
UPLIFT_BASELINES = ("reference", "base")
UPLIFT_METRICS = ("oracle_ctr", "preference", "relevance", "aesthetic")  # four pairs of columns fit 1366 px


FAILED = '<b class="warn">failed</b>'
BEST = ' class="best"'


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # no pyplot: no global backend state, nothing left open
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _series(points: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, point in enumerate(points):
        value = _number(point.get(key))
        if value is not None:
            xs.append(float(point.get("step", i)))
            ys.append(value)
    return xs, ys


def reward_curves_png(curve: Sequence[Mapping[str, Any]], guard: Sequence[Mapping[str, Any]]) -> bytes:
    """Three panels: raw reward means of the training candidates, their combined standardized
    reward, and the held-out guard's raw rewards, each against the optimizer step."""
    fig = Figure(figsize=(11.5, 3.3))
    panels = fig.subplots(1, 3)
    raw_keys = sorted({k for p in [*curve, *guard] for k in p if k.endswith("_raw")})
    raw_panels = ((panels[0], curve, "Training candidates (raw)"), (panels[2], guard, "Held-out guard (raw)"))
    for ax, points, title in raw_panels:
        for key in raw_keys:
            xs, ys = _series(points, key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=key.removesuffix("_raw"))
        ax.set_title(title, fontsize=10)
        if ax.lines:
            ax.legend(fontsize=8)
    xs, ys = _series(curve, "reward")
    panels[1].plot(xs, ys, marker="o", markersize=3, color="black")
    panels[1].set_title("Combined reward (weighted z)", fontsize=10)
    for ax in panels:
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def overoptimization_png(points: Sequence[Mapping[str, Any]]) -> bytes:
    """The learned reward (preference score) and the oracle CTR of the covers of each stage-2 snapshot."""
    fig = Figure(figsize=(5.6, 3.3))
    ax = fig.subplots()
    for key, label in (("preference", "preference score (learned)"), ("oracle_ctr", "oracle CTR (truth)")):
        xs, ys = _series(points, key)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=4, label=label)
    ax.set_xlabel("fine-tuning step (0 = base generator)", fontsize=9)
    ax.set_title("Learned reward vs oracle across snapshots", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def roc_png(fpr: Sequence[float], tpr: Sequence[float], auc: float | None) -> bytes:
    """The preference model's ROC curve on held-out impressions, with the chance diagonal."""
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    label = "preference model" + (f" (AUC {auc:.3f})" if auc is not None else "")
    ax.plot(list(fpr), list(tpr), color="#2458a6", label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title("Preference model ROC (held-out)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> float | None:
    """``value`` as a finite float, None for null, NaN, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any) -> str:
    """A number for a table cell (escaped); ``n/a`` for null or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    number = _number(value)
    if number is None:
        return esc(value)
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    return f"{number:.1f}" if abs(number) >= 10 else f"{number:.3f}"


def fmt_pct(value: Any) -> str:
    """A relative change (0.12) as a signed percentage (+12.0%); ``n/a`` for null."""
    number = _number(value)
    return "n/a" if number is None else f"{number * 100:+.1f}%"


def _interval(ci: Any, formatter=fmt) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(v) is not None for v in ci):
        return f'<span class="ci">[{formatter(ci[0])}, {formatter(ci[1])}]</span>'
    return ""


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _kv_table(rows: Iterable[tuple[str, Any]], css: str = "kv") -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{css}">{body}</table>' if body else '<p class="note">none recorded</p>'


def ordered_variants(variants: Mapping[str, Any]) -> list[str]:
    known = [v for v in VARIANT_LABELS if v in variants]
    return known + sorted(v for v in variants if v not in VARIANT_LABELS)


def _data_interval(metrics: Mapping[str, Any]) -> str:
    """``run.data_interval`` as "start to end"; the evaluate stage writes {start, end}, a pair also reads."""
    interval = (metrics.get("run") or {}).get("data_interval") or []
    if isinstance(interval, Mapping):
        interval = [interval.get("start", "?"), interval.get("end", "?")]
    return " to ".join(esc(d) for d in interval) if interval else "n/a"


def _scalars(mapping: Mapping[str, Any], skip: Iterable[str]) -> list[tuple[str, str]]:
    """The extra scalar fields of a section (newer keys show up without a code change)."""
    skip = set(skip)
    return [(k, fmt(v)) for k, v in mapping.items() if k not in skip and not isinstance(v, (Mapping, list))]


def _gate(metrics: Mapping[str, Any]) -> tuple[str, str]:
    """The quality gate as a one-line status for the header and a table of its checks."""
    gate = metrics.get("gate")
    if not isinstance(gate, Mapping):
        return "", ""
    against = f" against the published run of {esc(gate['baseline_ds'])}" if gate.get("baseline_ds") else ""
    status = (
        f'<p class="ok">Quality gate passed{against}.</p>'
        if gate.get("passed")
        else f'<p class="warn">Quality gate FAILED{against}.</p>'
    )
    rows = "".join(
        f"<tr><th>{esc(c.get('name'))}</th><td>{'ok' if c.get('passed') else FAILED}</td>"
        f"<td>{fmt_pct(c.get('value'))}</td><td>{fmt_pct(c.get('threshold'))}</td><td>{esc(c.get('detail', ''))}</td></tr>"
        for c in gate.get("checks") or []
    )
    head = "<tr><th>Check</th><th></th><th>Drop</th><th>Allowed</th><th>Detail</th></tr>"
    table = f'<h3>Quality gate checks</h3><table class="kv gate">{head}{rows}</table>' if rows else ""
    return status, table


def _promotion_section(promotion: Mapping[str, Any]) -> str:
    """Champion and challenger: which generator drew tonight's covers, and whether tonight's fine-tune replaces it."""
    if not promotion:
        return ""
    champion = f"<code>{esc(promotion.get('champion'))}</code>"
    if not promotion.get("challenger"):
        return f'<section id="promotion"><h2>Generator</h2><p>Champion {champion}; {esc(promotion.get("reason"))}.</p></section>'
    verdict = '<b class="ok">PROMOTED</b>' if promotion.get("promoted") else "<b>kept the champion</b>"
    return (
        '<section id="promotion"><h2>Champion and challenger</h2>'
        f"<p>Challenger <code>{esc(promotion.get('challenger'))}</code> against champion {champion} on "
        f"{esc(promotion.get('metric'))}: {fmt_pct(promotion.get('uplift'))}{_interval(promotion.get('uplift_ci'), fmt_pct)}. "
        f"{verdict}: {esc(promotion.get('reason'))}.</p></section>"
    )


def _not_measured_section(not_measured: Mapping[str, str]) -> str:
    """On real data: the metrics this run could not measure, each with the reason."""
    if not not_measured:
        return ""
    items = "".join(f"<li><code>{esc(name)}</code>: {esc(why)}</li>" for name, why in not_measured.items())
    return (
        '<section id="not-measured"><h2>Not measured on this data</h2>'
        "<p>This root has no embedded-world oracle, so these metrics are n/a below; "
        f"aesthetic, relevance, preference and diversity are measured.</p><ul>{items}</ul></section>"
    )


def _run_section(metrics: Mapping[str, Any]) -> str:
    run = metrics.get("run") or {}
    versions = [(k, f"<code>{esc(v)}</code>") for k, v in (run.get("model_versions") or {}).items()]
    timings = [
        (k, fmt(v) + (" s" if _number(v) is not None else "")) for k, v in _flatten(run.get("timings") or {})
    ]
    evaluation = _scalars(run, ("data_interval",))
    return (
        '<section><h2>Run</h2><div class="cols">'
        f"<div><h3>Model versions</h3>{_kv_table(versions)}</div>"
        f"<div><h3>Timings</h3>{_kv_table(timings)}"
        f"{'<h3>Evaluation</h3>' + _kv_table(evaluation) if evaluation else ''}</div></div>"
        f"{_gate(metrics)[1]}</section>"
    )


def _ablation_section(variants: Mapping[str, Mapping[str, Any]]) -> str:
    names = ordered_variants(variants)
    best: dict[str, set[str]] = {}
    for key, _, direction in METRIC_COLUMNS:
        values = {n: _number((variants[n] or {}).get(key)) for n in names}
        present = {n: v for n, v in values.items() if v is not None}
        if direction and len(present) >= 2:
            target = (max if direction > 0 else min)(present.values())
            best[key] = {n for n, v in present.items() if v == target}
    head = "".join(f"<th>{esc(header)}</th>" for _, header, _ in METRIC_COLUMNS)
    rows = []
    for name in names:
        row = variants[name] or {}
        cells = []
        for key, _, _ in METRIC_COLUMNS:
            css = ' class="best"' if name in best.get(key, set()) else ""
            cells.append(f"<td{css}>{fmt(row.get(key))}{_interval(row.get(f'{key}_ci'))}</td>")
        label = esc(VARIANT_LABELS.get(name, name)) + f'<span class="key">{esc(name)}</span>'
        if row.get("failure"):
            label += f'<span class="fail">failed: {esc(row["failure"])}</span>'
        rows.append(f'<tr data-variant="{esc(name)}"><th>{label}</th>{"".join(cells)}</tr>')
    if not rows:
        return '<section><h2>Ablation</h2><p class="note">No variants were evaluated.</p></section>'
    return (
        "<section><h2>Ablation</h2>"
        '<p class="note">Mean over held-out items; brackets are bootstrap 95% intervals over items. '
        "Best value per column is highlighted (lowest for seconds per cover). "
        "n/a: not measured (oracle metrics exist only in the embedded world).</p>"
        f'<div class="scroll"><table class="metrics"><thead><tr><th>Variant</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        f"{_uplift_table(variants, names)}</section>"
    )


def _uplift(variants: Mapping[str, Any], name: str, baseline: str, metric: str) -> tuple[Any, Any]:
    """``name``'s relative change of ``metric`` over ``baseline`` and its interval.

    The evaluate stage stores ``uplift_vs_<baseline>`` as {metric: change, metric_ci: [lo, hi]}; a bare
    number is read as the oracle CTR uplift. Without a stored value, the point estimate from the two means.
    """
    row = variants.get(name) or {}
    stored = row.get(f"uplift_vs_{baseline}")
    if isinstance(stored, Mapping) and metric in stored:
        return stored.get(metric), stored.get(f"{metric}_ci")
    if stored is not None and metric == "oracle_ctr":
        return stored, row.get(f"uplift_vs_{baseline}_ci")
    new, old = _number(row.get(metric)), _number((variants.get(baseline) or {}).get(metric))
    return (None, None) if new is None or not old else (new / old - 1.0, None)


def _uplift_table(variants: Mapping[str, Mapping[str, Any]], names: list[str]) -> str:
    baselines = [b for b in UPLIFT_BASELINES if b in variants]
    if not baselines:
        return ""
    headers = {key: header for key, header, _ in METRIC_COLUMNS}
    metrics = [(key, headers[key]) for key in UPLIFT_METRICS]
    top = "".join(f'<th colspan="{len(baselines)}" class="group">{esc(header)}</th>' for _, header in metrics)
    sub = "".join(f"<th>vs {esc(b)}</th>" for _ in metrics for b in baselines)
    rows = []
    for name in names:
        cells = []
        for metric, _ in metrics:
            for baseline in baselines:
                if name == baseline:
                    cells.append('<td class="muted">&mdash;</td>')
                    continue
                value, ci = _uplift(variants, name, baseline, metric)
                cells.append(f"<td>{fmt_pct(value)}{_interval(ci, fmt_pct)}</td>")
        rows.append(f"<tr><th>{esc(VARIANT_LABELS.get(name, name))}</th>{''.join(cells)}</tr>")
    return (
        "<h3>Uplift vs reference and base</h3>"
        '<p class="note">Relative change of the mean, with paired bootstrap 95% intervals where the evaluation '
        "computed them.</p>"
        f'<div class="scroll"><table class="metrics"><thead><tr><th rowspan="2">Variant</th>{top}</tr>'
        f"<tr>{sub}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _models_section(metrics: Mapping[str, Any]) -> str:
    pref = metrics.get("preference_model") or {}
    down = metrics.get("downstream") or {}
    without, with_ = _number(down.get("auc_without_covers")), _number(down.get("auc_with_covers"))
    delta = f"{with_ - without:+.4f}" if without is not None and with_ is not None else "n/a"
    pref_rows = [("AUC (held-out)", fmt(pref.get("auc"))), ("Oracle AUC (ceiling)", fmt(pref.get("oracle_auc"))),
                 ("Log loss", fmt(pref.get("log_loss")))]  # fmt: skip
    down_rows = [("AUC without cover features", fmt(without)), ("AUC with generated-cover features", fmt(with_)),
                 ("Difference", delta)]  # fmt: skip
    pref_rows += _scalars(pref, ("auc", "oracle_auc", "log_loss"))
    down_rows += _scalars(down, ("auc_without_covers", "auc_with_covers"))
    roc = pref.get("roc") or {}
    fpr, tpr = roc.get("fpr") or [], roc.get("tpr") or []
    if len(fpr) >= 2 and len(fpr) == len(tpr):
        plot = f'<img class="plot roc" alt="preference model ROC curve" src="{data_uri(roc_png(fpr, tpr, _number(pref.get("auc"))), "image/png")}">'
    else:
        plot = '<p class="note">No ROC curve recorded.</p>'
    return (
        '<section><h2>Models</h2><div class="cols">'
        f"<div>{plot}</div>"
        f"<div><h3>Preference model</h3>{_kv_table(pref_rows)}"
        f"<h3>Downstream click model</h3>{_kv_table(down_rows)}</div></div></section>"
    )


def _verdict(verdict: Mapping[str, Any]) -> str:
    """The opening line: the evaluation's verdict (:mod:`icg_core.evaluation.verdict`) and its evidence."""
    outcome = verdict.get("outcome")
    if not outcome:
        return ""
    label = f"ICG {outcome}" if outcome in ("wins", "loses") else str(outcome)
    css = "ok" if outcome == "wins" else "warn"
    if verdict.get("metric") is None:
        text = f"Verdict: {esc(label)}: {esc(verdict.get('reason'))}."
    else:
        best = str(verdict.get("baseline"))
        ceiling = _number(verdict.get("ceiling"))
        headroom = f" The world's own best cover reaches {fmt(ceiling)}." if ceiling is not None else ""
        text = (
            f"Verdict on oracle CTR: {esc(label)} against the best baseline, "
            f"{esc(VARIANT_LABELS.get(best, best).lower())}: ICG {fmt(verdict.get('icg'))}"
            f"{_interval(verdict.get('icg_ci'))} vs {fmt(verdict.get('baseline_value'))}"
            f"{_interval(verdict.get('baseline_ci'))}.{headroom}"
        )
    return f'<p class="verdict {css}" data-verdict="{esc(label)}">{text}</p>'.replace(
        '<span class="ci">', " "
    ).replace("</span>", "")


def _taste_label(taste: Mapping[str, Any] | None) -> str:
    """A segment's mean hidden taste as words, strongest first (embedded world only): "warm, dark, muted"."""
    words = {"warmth": ("warm", "cool"), "brightness": ("bright", "dark"), "saturation": ("vivid", "muted"),
             "contrast": ("contrasted", "soft")}  # fmt: skip
    strong = sorted(
        ((abs(v), k, v) for k, v in (taste or {}).items() if k in words and abs(v) >= 0.2), reverse=True
    )
    return ", ".join(words[k][0 if v > 0 else 1] for _, k, v in strong)


def _per_segment_section(metrics: Mapping[str, Any]) -> str:
    """Oracle CTR (and preference score) of each segment's users on each variant's covers."""
    variants = metrics.get("variants") or {}
    names = [n for n in ordered_variants(variants) if (variants[n] or {}).get("oracle_ctr_by_segment")]
    metric = "oracle_ctr"
    if not names:
        names = [n for n in ordered_variants(variants) if (variants[n] or {}).get("preference_by_segment")]
        metric = "preference"
    if not names:
        return ""
    seg = metrics.get("segments") or {}
    tastes, sizes = seg.get("taste") or {}, seg.get("sizes") or {}
    segments = sorted(
        {str(k) for n in names for k in variants[n][f"{metric}_by_segment"]}, key=_segment_order
    )
    head = "".join(f"<th>{esc(VARIANT_LABELS.get(n, n))}</th>" for n in names)
    rows = []
    for sid in segments:
        values = {
            n: _number({str(k): v for k, v in variants[n][f"{metric}_by_segment"].items()}.get(sid))
            for n in names
        }
        present = [v for n, v in values.items() if v is not None and n != "oracle_best"]
        top = max(present) if present else None
        best = {n for n, v in values.items() if v is not None and v == top and n != "oracle_best"}
        cells = "".join(f"<td{BEST if n in best else ''}>{fmt(v)}</td>" for n, v in values.items())
        taste = _taste_label(tastes.get(sid))
        label = f"segment {esc(sid)}" + (f'<span class="key">{esc(taste)}</span>' if taste else "")
        users = f'<td class="num">{fmt(sizes.get(sid))}</td>'
        rows.append(f"<tr><th>{label}</th>{users}{cells}</tr>")
    name = (
        "Oracle CTR of each segment's users" if metric == "oracle_ctr" else "Preference score of each segment"
    )
    return (
        f'<section><h2>Per segment</h2><p class="note">{name} on the covers each variant shows it (mean over '
        "held-out items). Best non-ceiling value per segment is highlighted.</p>"
        f'<div class="scroll"><table class="metrics"><thead><tr><th>Segment (taste)</th><th>Users</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _segment_order(segment_id: str) -> tuple[bool, int, str]:
    """Numeric segment ids in numeric order (2 before 10), any other id after them."""
    numeric = segment_id.lstrip("-").isdigit()
    return (not numeric, int(segment_id) if numeric else 0, segment_id)


def _segments_section(metrics: Mapping[str, Any]) -> str:
    seg = metrics.get("segments") or {}
    sizes = {str(k): v for k, v in (seg.get("sizes") or {}).items()}
    largest = max((n for n in (_number(v) for v in sizes.values()) if n is not None), default=0.0) or 1.0
    bars = []
    for sid in sorted(sizes, key=_segment_order):
        n = _number(sizes[sid]) or 0.0
        bars.append(
            f'<tr><th>segment {esc(sid)}</th><td class="num">{fmt(sizes[sid])}</td>'
            f'<td class="barcell"><div class="bar" style="width:{100.0 * n / largest:.1f}%"></div></td></tr>'
        )
    summary = [
        ("Segments (k)", fmt(seg.get("k"))),
        ("ARI vs taste groups", fmt(seg.get("ari_vs_taste_groups"))),
    ]
    table = (
        f'<table class="sizes">{"".join(bars)}</table>' if bars else '<p class="note">No sizes recorded.</p>'
    )
    return (
        '<section><h2>Segments</h2><div class="cols">'
        f"<div>{_kv_table(summary)}</div><div><h3>Users per segment</h3>{table}</div></div></section>"
    )


def _segment_heading(segment: str, metrics: Mapping[str, Any], columns: Sequence[str]) -> str:
    """The sheet's heading: segment, its users and the oracle CTR of each column's covers (if measured)."""
    sizes = {str(k): v for k, v in ((metrics.get("segments") or {}).get("sizes") or {}).items()}
    variants = metrics.get("variants") or {}
    ctrs = []
    for column in columns:
        by_segment = (variants.get(column) or {}).get("oracle_ctr_by_segment") or {}
        value = {str(k): v for k, v in by_segment.items()}.get(segment)
        if _number(value) is not None:
            ctrs.append(f"{esc(column if column != 'icg' else 'ICG')} {fmt(value)}")
    taste = _taste_label(((metrics.get("segments") or {}).get("taste") or {}).get(segment))
    users = f" ({fmt(sizes[segment])} users{', ' + esc(taste) if taste else ''})" if segment in sizes else ""
    ctr = f" &middot; oracle CTR: {', '.join(ctrs)}" if ctrs else ""
    return f'Segment {esc(segment)}<span class="muted">{users}{ctr}</span>'


def _contact_sheets(
    samples: Sequence[Mapping[str, Any]], images: Mapping[str, str | None], metrics: Mapping[str, Any]
) -> str:
    """One sheet per segment: items as rows, one column per variant (shared covers fill every segment)."""
    columns = SHEET_COLUMNS + sorted({str(s.get("variant")) for s in samples} - set(SHEET_COLUMNS))
    shared: dict[tuple[str, str], Mapping[str, Any]] = {}  # (item, variant) -> sample without a segment
    per_segment: dict[str, dict[tuple[str, str], Mapping[str, Any]]] = {}
    items: dict[str, dict[str, str]] = {}  # segment -> item_id -> title, in sample order
    titles: dict[str, str] = {}
    for sample in samples:
        item, variant, segment = (
            str(sample.get("item_id")),
            str(sample.get("variant")),
            sample.get("segment_id"),
        )
        titles.setdefault(item, str(sample.get("title") or item))
        if segment is None:
            shared[(item, variant)] = sample
        else:
            per_segment.setdefault(str(segment), {})[(item, variant)] = sample
            items.setdefault(str(segment), {})[item] = titles[item]
    if not per_segment:
        return '<section><h2>Contact sheets</h2><p class="note">No sampled covers.</p></section>'
    sheets = []
    for segment in sorted(per_segment, key=_segment_order):
        head = "".join(f"<th>{esc(VARIANT_LABELS.get(c, c) if c != 'icg' else 'ICG')}</th>" for c in columns)
        rows = []
        for item, title in items[segment].items():
            cells = []
            for column in columns:
                cover = per_segment[segment].get((item, column)) or shared.get((item, column))
                cells.append(f"<td>{_cover(cover, images)}</td>")
            rows.append(
                f'<tr><th class="title">{esc(title)}<span class="key">{esc(item)}</span></th>{"".join(cells)}</tr>'
            )
        sheets.append(
            f'<div class="sheet" data-segment="{esc(segment)}"><h3>{_segment_heading(segment, metrics, columns)}</h3>'
            f'<table class="covers"><thead><tr><th>Item</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        )
    return f'<section><h2>Contact sheets</h2><div class="sheets">{"".join(sheets)}</div></section>'


def _cover(sample: Mapping[str, Any] | None, images: Mapping[str, str | None]) -> str:
    if sample is None:
        return '<div class="missing">not sampled</div>'
    uri = images.get(str(sample.get("image_key") or ""))
    if uri is None:
        return f'<div class="missing" title="{esc(sample.get("image_key"))}">image missing</div>'
    alt = f"{sample.get('variant')} cover of {sample.get('title') or sample.get('item_id')}"
    return f'<img class="cover" alt="{esc(alt)}" src="{uri}">'


def _curves_section(
    finetune: Mapping[str, Any] | None, generator: str, snapshots: Sequence[Mapping[str, Any]] = ()
) -> str:
    over = ""
    if len(snapshots) >= 2:
        png = data_uri(overoptimization_png(snapshots), "image/png")
        over = (
            '<p class="note">Covers of each stage-2 snapshot on the first held-out items (plain sampling), '
            "scored after the fact: the learned reward rising while the oracle CTR stalls is over-optimization.</p>"
            f'<img class="plot" alt="learned reward vs oracle CTR across snapshots" src="{png}">'
        )
    if not finetune:
        return f'<section><h2>Fine-tuning</h2><p class="note">No fine-tuning this run.</p>{over}</section>'
    result = finetune.get("result") or {}
    curve, guard = result.get("curve") or [], result.get("guard") or []
    version = str(finetune.get("generator_version", ""))
    note = f"Generator <code>{esc(version)}</code>, fine-tuned on ds={esc(finetune.get('ds', 'n/a'))}"
    if generator and version != generator:
        note += f" (this run used <code>{esc(generator)}</code>, whose log was not found; showing the newest)"
    note += f"; {fmt(result.get('steps'))} steps, complete: {esc(result.get('complete', 'n/a'))}."
    if curve or guard:
        png = data_uri(reward_curves_png(curve, guard), "image/png")
        plot = f'<img class="plot wide" alt="reward curves" src="{png}">'
    else:
        plot = '<p class="note">The log has no reward curve points.</p>'
    return f'<section><h2>Fine-tuning reward curves</h2><p class="note">{note}</p>{plot}{over}</section>'


STYLE = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1d2330;font:15px/1.45 system-ui,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1240px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:0 0 10px}h3{font-size:15px;margin:14px 0 6px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:16px 20px;margin:16px 0}
.sub,.note{color:#5a6372;margin:0}.verdict{font-size:17px;font-weight:600;margin:16px 0;padding:12px 16px;
  border-radius:8px;background:#fff;border:1px solid #dde1e8}.note{font-size:13px;margin:4px 0 10px}.warn,.fail{color:#8a3030}.ok{color:#2d6a3a}
code{font:12.5px ui-monospace,"DejaVu Sans Mono",monospace;word-break:break-all}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:8px 32px;align-items:start}
.scroll{overflow-x:auto}table{border-collapse:collapse}th,td{padding:5px 8px;text-align:left;vertical-align:top}
table.metrics{width:100%;font-size:13.5px}table.metrics th,table.metrics td{border-bottom:1px solid #e6e9ee}
table.metrics thead th{font-size:12.5px;color:#5a6372;font-weight:600;vertical-align:bottom}
table.metrics td{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th.group{text-align:center!important;border-bottom:1px solid #c9ced8}td.best{background:#e3f1e5;font-weight:700}
.muted{color:#8a93a3;font-weight:400}.ci{display:block;font-size:11.5px;color:#5a6372;font-weight:400}
.key{display:block;font:11px ui-monospace,"DejaVu Sans Mono",monospace;color:#8a93a3;font-weight:400}
section.failed pre{white-space:pre-wrap;font-size:12px;background:#fbeeee;padding:6px}
.fail{display:block;font-size:12px;font-weight:400;white-space:normal}
table.kv th,table.kv td{padding:2px 8px}table.kv th{font-weight:500;color:#5a6372;padding-left:0}
table.sizes td.num{text-align:right}table.sizes td.barcell{width:260px}
.bar{height:12px;background:#6b8fd6;border-radius:3px;margin-top:5px}
.sheets{display:grid;grid-template-columns:repeat(auto-fit,minmax(860px,1fr));gap:20px}.sheet h3{margin-top:0}
table.covers thead th{font-size:12.5px;color:#5a6372;text-align:center}table.covers td{padding:4px}
table.covers th.title{width:150px;font-size:13px;font-weight:600;overflow-wrap:anywhere}
img.cover{display:block;width:128px;height:auto;border-radius:4px;background:#eee}
.missing{width:128px;height:128px;display:flex;align-items:center;justify-content:center;background:#f1e3e3;
  color:#8a3030;font-size:12px;border-radius:4px}
img.plot{display:block;max-width:100%;height:auto}img.roc{width:400px}
"""

# Records on <body> how many <img> decoded (naturalWidth > 0): readable by people and by the browser test.
IMAGE_CHECK_SCRIPT = """window.addEventListener("load", function () {
  var all = Array.prototype.slice.call(document.images), b = document.body;
  var broken = all.filter(function (img) { return !(img.complete && img.naturalWidth > 0); }).length;
  b.setAttribute("data-images-total", all.length); b.setAttribute("data-images-loaded", all.length - broken);
  b.setAttribute("data-images-broken", broken);
});"""


def failure_section(failures: Sequence[str]) -> str:
    """The run's failures (``"stage: reason"``), first on the page: what failed and why."""
    if not failures:
        return ""
    items = "".join(
        f"<li><b>{esc(stage)}</b><pre>{esc(reason.strip())}</pre></li>"
        for stage, _, reason in (failure.partition(": ") for failure in failures)
    )
    return (
        '<section class="failed"><h2 class="warn">This run FAILED: nothing was published for this day</h2>'
        "<p>Readers keep the previously published covers. What failed, and why:</p>"
        f"<ul>{items}</ul></section>"
    )


def render_failure_page(ds: str, failures: Sequence[str]) -> str:
    """The page of a run that failed before it had metrics: only its failures."""
    body = f"<header><h1>ICG run report: {esc(ds)}</h1></header>{failure_section(failures)}"
    return _page(ds, body)


def render_report(
    metrics: Mapping[str, Any],
    finetune: Mapping[str, Any] | None,
    images: Mapping[str, str | None],
    failures: Sequence[str] = (),
) -> str:
    """The page as HTML text.

    Args:
        metrics: the contents of ``metrics.json`` (the evaluate stage's output; keys in the README).
        finetune: the fine-tuning log whose curves are shown, or None.
        images: image key -> data URI (None: unreadable) for every sample's ``image_key``.
        failures: ``"stage: reason"`` of each stage that failed in this run (shown first).
    """
    ds = str(metrics.get("ds", "n/a"))
    generator = str(((metrics.get("run") or {}).get("model_versions") or {}).get("generator") or "")
    samples = metrics.get("samples") or []
    missing = sum(1 for s in samples if images.get(str(s.get("image_key") or "")) is None)
    warning = f'<p class="warn">{missing} sampled cover(s) could not be read.</p>' if missing else ""
    warning += _gate(metrics)[0]
    body = "".join(
        [
            f"<header><h1>ICG run report: {esc(ds)}</h1>"
            f'<p class="sub">Data interval {_data_interval(metrics)}. Personalized cover images evaluated on '
            "held-out items, segments and seeds.</p>"
            f"{warning}</header>",
            failure_section(failures),
            _verdict(metrics.get("verdict") or {}),
            _promotion_section(metrics.get("promotion") or {}),
            _not_measured_section(metrics.get("not_measured") or {}),
            _run_section(metrics),
            _ablation_section(metrics.get("variants") or {}),
            _per_segment_section(metrics),
            _models_section(metrics),
            _curves_section(finetune, generator, metrics.get("finetune_curve") or []),
            _segments_section(metrics),
            _contact_sheets(samples, images, metrics),
        ]
    )
    return _page(ds, body)


def _page(ds: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ICG report {esc(ds)}</title><style>{STYLE}</style>"
        f"<script>{IMAGE_CHECK_SCRIPT}</script></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
