"""Plotly figures as pure functions of DataFrames: same frame in, same figure out, no store access, no Streamlit.

Hover text is built from names and numbers only, never from model output, and names are HTML-escaped because
plotly renders a subset of HTML tags in hover labels.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

_KIND_SYMBOLS = {"model": "circle", "mixture:generated": "diamond", "mixture:estimate": "circle-open",
                 "mixture:check": "x"}


def ema(values: Sequence[float], weight: float) -> np.ndarray:
    """Exponential moving average ``s_t = w s_{t-1} + (1 - w) x_t`` started at ``s_0 = x_0`` (TensorBoard's
    smoothing slider without its debiasing); ``weight`` 0 returns the values unchanged."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight: must lie in [0, 1) (got {weight})")
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    for i, v in enumerate(x):
        out[i] = v if i == 0 else weight * out[i - 1] + (1.0 - weight) * v
    return out


def metric_curves(curves: pd.DataFrame, metric: str, smoothing: float = 0.0,
                  names: dict[str, str] | None = None) -> go.Figure:
    """One line per run (columns run_id, step, value), smoothed by ``ema``; with smoothing the raw values stay
    as faint lines behind the smoothed ones."""
    fig = go.Figure()
    for run_id, part in curves.sort_values(["run_id", "step"]).groupby("run_id", sort=True):
        label = html.escape((names or {}).get(run_id, run_id))
        if smoothing > 0:
            fig.add_trace(go.Scatter(x=part["step"], y=part["value"], mode="lines", name=f"{label} (raw)",
                                     opacity=0.25, showlegend=False, legendgroup=run_id, hoverinfo="skip"))
        # A run with one logged point (an evaluation at the last step) would be an invisible line: draw a marker.
        fig.add_trace(go.Scatter(x=part["step"], y=ema(part["value"], smoothing),
                                 mode="lines" if len(part) > 1 else "markers", name=label, legendgroup=run_id,
                                 meta=run_id))
    fig.update_layout(title=html.escape(metric), xaxis_title="step", yaxis_title=html.escape(metric),
                      hovermode="x unified", margin={"t": 40})
    # Steps are whole numbers: over a short run plotly's automatic ticks would fall between them (1.5, 2.5).
    span = curves["step"].max() - curves["step"].min() if len(curves) else 0
    fig.update_xaxes(tickformat="d", dtick=1 if span <= 10 else None)
    return fig


def _error_arrays(frame: pd.DataFrame) -> dict:
    """Asymmetric error bars from low/high; rows without an interval get no bar (NaN)."""
    return {"type": "data", "symmetric": False, "array": (frame["high"] - frame["value"]).to_numpy(),
            "arrayminus": (frame["value"] - frame["low"]).to_numpy()}


def win_rate_bars(rows: pd.DataFrame, title: str = "Win rate") -> go.Figure:
    """Grouped bars, one group per label and one bar per metric (raw and length-controlled win rate), with the
    stored 95% intervals as error bars; the dashed line at 0.5 is a tie."""
    fig = go.Figure()
    for metric, part in rows.groupby("metric", sort=False):
        fig.add_trace(go.Bar(x=part["label"].map(html.escape), y=part["value"], name=html.escape(str(metric)),
                             error_y=_error_arrays(part), meta=str(metric)))
    fig.add_hline(y=0.5, line_dash="dash", line_color="gray")
    fig.update_layout(title=title, barmode="group", yaxis={"range": [0, 1], "title": "win rate"}, margin={"t": 40},
                      showlegend=True)
    return fig


def leaderboard_chart(table: pd.DataFrame) -> go.Figure:
    """Bradley-Terry ratings with their bootstrap intervals, best on top."""
    ordered = table.sort_values("rating")
    fig = go.Figure(go.Scatter(x=ordered["rating"], y=ordered["model"].map(html.escape), mode="markers",
                               error_x=_error_arrays(ordered.rename(columns={"rating": "value"})),
                               name="rating"))
    fig.update_layout(title="Bradley-Terry rating (Elo scale)", xaxis_title="rating", margin={"t": 40})
    return fig


def lambda_chart(path: pd.DataFrame) -> go.Figure:
    """Mirror-descent weights over steps, one line per objective (columns step, objective, weight)."""
    fig = go.Figure()
    for objective, part in path.sort_values("step").groupby("objective", sort=True):
        fig.add_trace(go.Scatter(x=part["step"], y=part["weight"], mode="lines", name=html.escape(objective)))
    fig.update_layout(title="λ path (mirror descent)", xaxis_title="step", yaxis={"range": [0, 1], "title": "λ"},
                      margin={"t": 40})
    return fig


def _labels(points: pd.DataFrame) -> list[str]:
    """What is written beside each point: models and named mixture points (lambda*, experts, reference) by name;
    the many grid estimates stay unlabelled, their weights are in the hover."""
    labels = points["label"] if "label" in points else points["name"]
    return ["" if label == "grid" else html.escape(str(label)) for label in labels]


def _hover(points: pd.DataFrame, objectives: Sequence[str]) -> list[str]:
    lines = []
    for row in points.to_dict("records"):
        parts = [f"<b>{html.escape(str(row['name']))}</b>", f"kind: {html.escape(str(row['kind']))}",
                 f"run: {html.escape(str(row['run_id']))}"]
        if row.get("distribution"):
            parts.append(f"distribution: {html.escape(str(row['distribution']))}")
        if row["weights"]:
            parts.append(f"weights: {html.escape(str(row['weights']))}")
        if row["ess"] is not None and not pd.isna(row["ess"]):
            parts.append(f"ESS: {row['ess']:.1f}")
        parts += [f"{html.escape(o)}: {row[o]:.4f}" for o in objectives]
        lines.append("<br>".join(parts))
    return lines


def front_order(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The non-dominated points (column on_front) in drawing order: ascending x, then descending y."""
    front = points[points["on_front"].astype(bool)]
    return front.sort_values([x, y], ascending=[True, False])


def pareto_chart(points: pd.DataFrame, objectives: Sequence[str], path: pd.DataFrame | None = None,
                 current: dict[str, float] | None = None) -> go.Figure:
    """Objective-vs-objective scatter of models and mixtures with the Pareto front drawn through exactly the
    non-dominated points; two objectives give a 2-D chart, three a 3-D one.

    ``points``: pareto_points output (name, kind, run_id, weights, ess, objectives..., on_front). ``path``:
    estimated scores along a λ path (columns step, weights, objectives...). ``current``: one point (objective ->
    score) drawn on top, e.g. the mixer's estimate for the slider weights.
    """
    if len(objectives) not in (2, 3):
        raise ValueError(f"objectives: pick 2 or 3 (got {len(objectives)})")
    three = len(objectives) == 3
    scatter = go.Scatter3d if three else go.Scatter

    def coords(frame: pd.DataFrame) -> dict:
        axes = dict(zip("xyz", objectives))
        return {axis: frame[col].to_numpy() for axis, col in axes.items()}

    fig = go.Figure()
    distributions = points["distribution"] if "distribution" in points else pd.Series("", index=points.index)
    # one legend group and one front per distribution: points of different distributions are never compared
    for distribution, group in points.groupby(distributions, sort=True):
        legend = {"legendgroup": distribution, "legendgrouptitle_text": html.escape(str(distribution)) or None}
        for kind, part in group.groupby("kind", sort=True):
            marker = {"symbol": _KIND_SYMBOLS.get(kind, "circle"), "size": 5 if three else 10}
            fig.add_trace(scatter(**coords(part), mode="markers+text", name=html.escape(kind), marker=marker,
                                  text=_labels(part), textposition="top center", hovertext=_hover(part, objectives),
                                  hovertemplate="%{hovertext}<extra></extra>", meta=kind, **legend))
        front = front_order(group, objectives[0], objectives[1])
        if len(front):
            fig.add_trace(scatter(**coords(front), mode="markers" if three else "lines+markers",
                                  name="Pareto front", line=None if three else {"dash": "dot"},
                                  marker={"size": 3 if three else 4, "color": "black"},
                                  hoverinfo="skip", meta="front", **legend))
    if path is not None and len(path):
        fig.add_trace(scatter(**coords(path), mode="lines+markers", name="λ path (estimated)",
                              marker={"size": 3}, text=[f"step {s}<br>λ={html.escape(w)}" for s, w in
                                                        zip(path["step"], path["weights"])],
                              hovertemplate="%{text}<extra></extra>", meta="path"))
    if current is not None:
        point = pd.DataFrame([current])
        fig.add_trace(scatter(**coords(point), mode="markers", name="current mixture",
                              marker={"size": 9 if three else 18, "symbol": "diamond" if three else "star",
                                      "color": "crimson"},
                              meta="current"))
    if three:
        fig.update_layout(scene={"xaxis_title": objectives[0], "yaxis_title": objectives[1],
                                 "zaxis_title": objectives[2]})
    else:
        fig.update_layout(xaxis_title=objectives[0], yaxis_title=objectives[1])
    fig.update_layout(title="Pareto front (larger is better)", margin={"t": 40})
    return fig
