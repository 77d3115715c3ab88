"""`ristretto plot_training_log`: Caffe's plot_training_log.py chart types from train logs."""

from __future__ import annotations

from ristretto_cli.errors import RistrettoError
from ristretto_cli.logparse import CHART_TYPES, chart_series, parse_training_log
from ristretto_cli.plotting import new_figure, require_matplotlib, save_png

SUMMARY_KEY = "ristretto-training-plot"
WIDTH, HEIGHT = 900, 600


def chart_type_help() -> str:
    return "\n".join(f"  {k}: {title}" for k, (_, _, _, title) in CHART_TYPES.items())


def plot_training_log(chart_type: int, out_path: str, log_paths: list[str]) -> dict:
    """Draw ``chart_type`` for every log into ``out_path`` (PNG); returns what was drawn."""
    if chart_type not in CHART_TYPES:
        raise RistrettoError(f"unknown chart type {chart_type}; the types are:\n{chart_type_help()}")
    if not log_paths:
        raise RistrettoError("give at least one log file")
    require_matplotlib("plot_training_log")
    from ristretto_cli.io import check_writable
    check_writable(out_path)
    logs = [parse_training_log(p) for p in log_paths]
    which, y_field, x_field, title = CHART_TYPES[chart_type]
    fig = new_figure(WIDTH, HEIGHT)
    ax = fig.subplots()
    summary = {"title": title, "size": [WIDTH, HEIGHT], "series": []}
    for log in logs:
        xs, ys = chart_series(log, chart_type)
        if not xs:
            what = "learning rate" if y_field == "LearningRate" else f"{which} '{y_field}'"
            raise RistrettoError(f"the log has no {what} values to plot", path=log.path)
        ax.plot(xs, ys, marker="o" if len(xs) < 60 else None, markersize=3, label=log.path)
        summary["series"].append({"name": log.path, "points": len(xs)})
    ax.set_title(title)
    ax.set_xlabel("Iterations" if x_field == "NumIters" else "Seconds")
    ax.set_ylabel({"LearningRate": "learning rate"}.get(y_field, f"{which} {y_field}"))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    save_png(fig, out_path, SUMMARY_KEY, summary)
    return summary
