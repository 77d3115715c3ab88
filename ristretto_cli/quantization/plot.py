"""The plot of ``ristretto quantize --plot``: score against bit width, one series per sweep.

Needs matplotlib (``pip install ristretto-cli[plot]``); drawn and written with the shared
helpers of ``ristretto_cli.plotting`` (bare Agg figure, atomic PNG with a summary chunk).
The x axis is log2 from 1 to 32 bits with a tick at every width; horizontal lines mark the
float baseline and the error-margin threshold; each sweep's chosen width is ringed (at 32
bits, on the baseline, when no width passed). ``plot_search`` returns a small summary of
what it drew, also stored in the PNG as a text chunk under ``SUMMARY_KEY``
(``read_png_summary`` reads it back), so the file documents itself.
"""

from __future__ import annotations

from ristretto_cli import plotting
from ristretto_cli.plotting import png_size

SUMMARY_KEY = "ristretto-quantize-plot"
WIDTH, HEIGHT = 900, 720
_WIDTHS = (1, 2, 4, 8, 16, 32)
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
_MODE_TITLES = {"dynamic_fixed_point": "dynamic fixed point", "minifloat": "minifloat",
                "integer_power_of_2_weights": "integer power-of-two weights"}


def require_matplotlib() -> None:
    """A clear error (before any work) when the optional plotting dependency is missing."""
    plotting.require_matplotlib("--plot")


def plot_search(result, path, *, width: int = WIDTH, height: int = HEIGHT) -> dict:
    """Draw the search ``result`` (a ``QuantizeResult``) into the PNG ``path``; returns the
    summary: title, size in pixels, and per series its name, point count, bit widths and
    chosen width, plus the horizontal lines drawn."""
    require_matplotlib()
    from matplotlib.ticker import FixedLocator, NullLocator

    o = result.options
    fig = plotting.new_figure(width, height)
    # Top: the whole score range; bottom: a zoom on the band around the threshold, where
    # the decisions are made (a failing 1-bit point would otherwise flatten everything).
    full, zoom = fig.subplots(2, 1, height_ratios=(3, 2), sharex=True)
    baseline = result.baseline_score
    threshold = result.threshold
    summary = {"title": "", "size": [width, height], "series": [], "lines": []}

    for ax in (full, zoom):
        ax.axhline(baseline, color="black", linewidth=1.2,
                   label=f"32-bit float baseline ({baseline:.4g})")
        ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1.0,
                   label=f"threshold: baseline - {o.error_margin:g}% ({threshold:.4g})")
    summary["lines"] += [{"name": "baseline", "y": baseline}, {"name": "threshold", "y": threshold}]

    for i, sweep in enumerate(result.sweeps):
        color = _COLORS[i % len(_COLORS)]
        xs = [p.bit_width for p in sweep.points]
        ys = [p.score for p in sweep.points]
        chosen = next((p for p in sweep.points if p.bit_width == sweep.chosen), None)
        cy = chosen.score if chosen is not None else baseline
        for ax in (full, zoom):
            ax.plot(xs, ys, marker="o", color=color, linewidth=1.5, label=sweep.title)
            ax.scatter([sweep.chosen], [cy], s=220, facecolors="none", edgecolors=color, linewidths=2.2,
                       zorder=5, label=f"chosen: {sweep.chosen} bit" if ax is full else None)
        summary["series"].append({"name": sweep.title, "points": len(xs), "bit_widths": xs,
                                  "chosen": sweep.chosen})
    if result.final is not None and o.trimming_mode == "dynamic_fixed_point":
        for ax in (full, zoom):
            ax.axhline(result.final_score, color="tab:gray", linestyle=":", linewidth=1.2,
                       label=f"final net, {result.final_label}: {result.final_score:.4g}")
        summary["lines"].append({"name": "final", "y": result.final_score})

    span = max(baseline - threshold, 0.005)
    zoom.set_ylim(threshold - 1.5 * span, baseline + 0.75 * span)
    for ax in (full, zoom):
        ax.set_xscale("log", base=2)
        ax.set_xlim(0.8, 40)
        ax.xaxis.set_major_locator(FixedLocator(_WIDTHS))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, alpha=0.3)
    zoom.set_xticks(_WIDTHS, [str(w) for w in _WIDTHS])
    zoom.set_xlabel("bit width")
    full.set_ylabel(f"score ({result.score_output})")
    zoom.set_ylabel("near the threshold")
    mode = _MODE_TITLES.get(o.trimming_mode, o.trimming_mode)
    title = f"{result.net_name or 'net'}: {mode} ({o.semantics} semantics, {o.iterations} batches)"
    full.set_title(title)
    full.legend(loc="lower right", fontsize="small")
    summary["title"] = title

    plotting.save_png(fig, path, SUMMARY_KEY, summary)
    return summary


def read_png_summary(data: bytes) -> dict | None:
    """The summary ``plot_search`` stored in the PNG ``data``, or None."""
    return plotting.read_png_summary(data, SUMMARY_KEY)


__all__ = ["SUMMARY_KEY", "WIDTH", "HEIGHT", "plot_search", "png_size", "read_png_summary",
           "require_matplotlib"]
