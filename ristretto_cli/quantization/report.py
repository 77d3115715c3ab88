"""The JSON report of ``ristretto quantize --report``.

Everything the search measured and decided, in one file: the baseline, every scored point
(sweep, bit width, score, pass/fail, every output mean including the loss), every measured
layer's ranges and integer lengths, the chosen configuration, the final score, the settings
and the timings. Scores are the float32 values widened to double (exact), with the ``%g``
text the log prints beside them.
"""

from __future__ import annotations

import json

import numpy as np

from ristretto_cli import __version__
from ristretto_cli.log import fmt_g

REPORT_VERSION = 1


def _num(value) -> float:
    return float(np.float32(value))


def _run(run) -> dict:
    """Means of one scoring run: {output: [mean of each element]}, the loss, how and how long."""
    outputs: dict[str, list[float]] = {}
    for name, _, mean, _ in run.result.means:
        outputs.setdefault(name, []).append(_num(mean))
    return {"outputs": outputs, "loss": _num(run.result.loss), "seconds": round(run.seconds, 4),
            "computed": run.how}


def report_dict(result) -> dict:
    o = result.options
    baseline = result.baseline_score
    layers = []
    for rec in result.ranges:
        entry = {"name": rec.name, "type": rec.type, "max_in": _num(rec.max_in), "max_out": _num(rec.max_out),
                 "max_params": _num(rec.max_params)}
        il = result.lengths.get(rec.name)
        if il is not None:
            entry.update(il_in=il.il_in, il_out=il.il_out)
            if il.il_params is not None:
                entry["il_params"] = il.il_params
        layers.append(entry)
    sweeps = []
    for s in result.sweeps:
        points = []
        for p in s.points:
            point = {"sweep": s.key, "bit_width": p.bit_width, "score": _num(p.score),
                     "score_text": fmt_g(np.float32(p.score)), "passed": p.passed}
            point.update(_run(p.run))
            points.append(point)
        sweeps.append({"key": s.key, "title": s.title, "chosen": s.chosen, "points": points})
    final = None
    if result.final is not None:
        final = {"label": result.final_label, "score": _num(result.final_score),
                 "score_text": fmt_g(np.float32(result.final_score))}
        final.update(_run(result.final))
    out = {
        "report_version": REPORT_VERSION,
        "tool": f"ristretto-cli {__version__} quantize",
        "net": result.net_name,
        "model": o.model,
        "weights": o.weights,
        "model_quantized": o.model_quantized,
        "trimming_mode": o.trimming_mode,
        "semantics": o.semantics,
        "iterations": o.iterations,
        "statistics_iterations": 10,
        "error_margin": o.error_margin,
        "score_output": result.score_output,
        "baseline": dict({"score": _num(baseline), "score_text": fmt_g(np.float32(baseline))},
                         **_run(result.baseline)),
        "threshold": result.threshold,
        "layers": layers,
        "exp_bits": result.exp_bits,
        "sweeps": sweeps,
        "points": [p for s in sweeps for p in s["points"]],
        "chosen": result.chosen(),
        "final": final,
        "summary": result.summary,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "engine": result.engine,
    }
    if result.plot_summary is not None:
        out["plot"] = result.plot_summary
    return out


def write_report(result, path) -> None:
    from ristretto_cli.io import atomic_write_text
    atomic_write_text(path, json.dumps(report_dict(result), indent=2) + "\n")


__all__ = ["REPORT_VERSION", "report_dict", "write_report"]
