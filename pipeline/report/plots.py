"""The report's plots: one drawer per figure (matplotlib, Agg canvas, inline PNG)."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.report.common import truncate

log = logging.getLogger(f"prefcurate.{__name__}")

# ---------------------------------------------------------------------------- plots


def _fig(width: float = 6.4, height: float = 3.2):
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def to_png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bars(
    ax, hist: dict[str, Any], label: str | None = None, color: str | None = None, alpha: float = 0.8
) -> None:
    e = hist["edges"]
    widths = [b - a for a, b in zip(e[:-1], e[1:])]
    ax.bar(
        e[:-1],
        hist["counts"],
        width=widths,
        align="edge",
        alpha=alpha,
        label=label,
        color=color,
        edgecolor="white",
        linewidth=0.5,
    )


def _plot_stages(rep: dict[str, Any]):
    rows = [r for r in rep["stages"]["rows"] if r["in"] is not None]
    if not rows:
        return None
    fig, ax = _fig(6.4, 0.45 * len(rows) + 1.2)
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["in"] for r in rows], height=0.4, label="in", color="#9db4d6")
    ax.barh(y + 0.2, [r["kept"] or 0 for r in rows], height=0.4, label="kept", color="#2e6fba")
    ax.set_yticks(y, [r["stage"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _plot_scores(rep: dict[str, Any]):
    s = rep["scores"]
    if not s["hist_chosen"] and not s["hist_rejected"]:
        return None
    fig, ax = _fig()
    if s["hist_chosen"]:
        _bars(ax, s["hist_chosen"], "score_chosen", "#2e8b57", 0.6)
    if s["hist_rejected"]:
        _bars(ax, s["hist_rejected"], "score_rejected", "#c0392b", 0.6)
    ax.set_xlabel("score")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    return fig


def _plot_agreement(rep: dict[str, Any]):
    a = rep["judges"]["agreement"]
    if not a:
        return None
    k = len(a["annotators"])
    m = np.array([[np.nan if v is None else v for v in row] for row in a["agreement"]])
    fig, ax = _fig(min(6.4, 2.8 + 0.45 * k), min(2.0 + 0.4 * k, 7))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(k), [str(i + 1) for i in range(k)])
    ax.set_yticks(range(k), [str(i + 1) for i in range(k)])
    for i in range(k):
        for j in range(k):
            if not np.isnan(m[i, j]):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if m[i, j] < 0.6 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


def _plot_position(rep: dict[str, Any]):
    pc = rep["judges"]["position_consistency"]
    vals = {k: v for k, v in (pc or {}).items() if v is not None}
    if not vals:
        return None
    fig, ax = _fig(6.4, 0.45 * len(vals) + 1.2)
    names = list(vals)
    ax.barh(range(len(names)), [vals[n] for n in names], color="#8e6cc0")
    ax.set_yticks(range(len(names)), [truncate(n, 40) for n in names], fontsize=7)
    ax.set_xlim(0, 1)
    ax.axvline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("share of pairs where both orders agree")
    return fig


def _plot_length(rep: dict[str, Any]):
    pts = rep["length_bias"]["points"]
    if not pts:
        return None
    fig, ax = _fig(5.0, 4.0)
    x = [p[1] for p in pts]
    y = [p[0] for p in pts]
    ax.scatter(x, y, s=10, alpha=0.6, color="#2e6fba")
    hi = max(max(x), max(y), 1)
    ax.plot([0, hi], [0, hi], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("rejected length (chars)")
    ax.set_ylabel("chosen length (chars)")
    return fig


def _plot_length_shift(rep: dict[str, Any]):
    lb = rep["length_bias"]
    shown = [
        (n, d, c)
        for n, d, c in (
            ("before curation", lb.get("before"), "#b0b7c3"),
            ("published", lb.get("after"), "#2e6fba"),
        )
        if d and d["pairs"]
    ]
    if not shown:
        return None
    fig, ax = _fig()
    for name, d, color in shown:
        edges = np.array(d["edges"])
        share = np.array(d["counts"], dtype=float) / max(d["pairs"], 1)
        ax.step(edges[:-1], share, where="post", color=color, lw=1.6, label=name)
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("(chosen − rejected) / (chosen + rejected) length")
    ax.set_ylabel("share of pairs")
    ax.legend(fontsize=8)
    return fig


def _plot_hist(
    get: Callable[[dict[str, Any]], Any], xlabel: str, color: str
) -> Callable[[dict[str, Any]], Any]:
    """A histogram plot of the report's histogram ``get(rep)`` (None: no plot)."""

    def draw(rep: dict[str, Any]):
        h = get(rep)
        if not h:
            return None
        fig, ax = _fig(6.4, 2.6)
        _bars(ax, h, color=color)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pairs")
        return fig

    return draw


def _dist_hist(col: str, color: str) -> Callable[[dict[str, Any]], Any]:
    return _plot_hist(lambda rep: rep["distributions"][col]["hist"], col, color)


def _plot_noise(rep: dict[str, Any]):
    n = rep["noise"]
    if n.get("denoise_in") is None:
        return None
    kept = (n["denoise_in"] or 0) - sum(n["dropped"].values()) - (n["flipped"] or 0)
    labels = ["kept", "flipped", *[f"dropped: {r}" for r in n["dropped"]]]
    vals = [kept, n["flipped"] or 0, *n["dropped"].values()]
    fig, ax = _fig(6.4, 0.45 * len(labels) + 1.2)
    colors = ["#2e8b57", "#d68910", *["#c0392b"] * len(n["dropped"])]
    ax.barh(range(len(labels)), vals, color=colors)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("pairs out of denoise's input")
    return fig


# (section, plot id, caption, drawer). A drawer returns None when its data is absent.
PLOTS: list[tuple[str, str, str, Callable[[dict[str, Any]], Any]]] = [
    (
        "stages",
        "plot-stage-rows",
        "Rows in and kept at every stage, in pipeline order.",
        _plot_stages,
    ),
    (
        "scores",
        "plot-scores",
        "Distribution of score_chosen and score_rejected over the published pairs.",
        _plot_scores,
    ),
    (
        "judges",
        "plot-agreement",
        "Pairwise agreement between annotators on the comparisons "
        "both judged (numbers index the annotator table).",
        _plot_agreement,
    ),
    (
        "judges",
        "plot-position-consistency",
        "Position consistency per judge: share of pairs "
        "whose verdict is the same in both presentation orders.",
        _plot_position,
    ),
    (
        "length_bias",
        "plot-length-bias",
        "Chosen vs rejected response length; points above "
        "the diagonal are pairs where the longer response was chosen.",
        _plot_length,
    ),
    (
        "length_bias",
        "plot-length-shift",
        "Normalised chosen − rejected length before curation and in the published pairs.",
        _plot_length_shift,
    ),
    (
        "distributions",
        "plot-p-hat",
        "Histogram of p_hat, the estimated probability that chosen is preferred.",
        _dist_hist("p_hat", "#2e6fba"),
    ),
    (
        "distributions",
        "plot-disagreement",
        "Histogram of disagreement d = 1 − |2p̂ − 1|.",
        _dist_hist("disagreement", "#8e6cc0"),
    ),
    (
        "distributions",
        "plot-margin",
        "Histogram of the margin used by reward-model training.",
        _dist_hist("margin", "#2e8b57"),
    ),
    (
        "similarity",
        "plot-similarity",
        "Cosine similarity of chosen and rejected responses.",
        _plot_hist(
            lambda rep: rep["similarity"]["hist"], "cosine similarity (chosen, rejected)", "#d68910"
        ),
    ),
    ("noise", "plot-noise", "What denoise did with its input pairs.", _plot_noise),
]
