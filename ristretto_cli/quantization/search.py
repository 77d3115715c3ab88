"""``ristretto quantize``: Ristretto's automatic bit-width search (ristretto.md §5, §6).

The default search makes Ristretto's decisions exactly:

1. baseline: the float TEST net over ``iterations`` batches; its score is the first element
   of the first output (outputs sorted by name) or of ``--score``;
2. range statistics over exactly 10 batches of a fresh TRAIN net, measured after each whole
   forward pass (``ranges.RangeRecorder``), and the integer lengths derived from them;
3. per mode:

   * ``dynamic_fixed_point``: three sweeps of 16/8/4/2/1 bits (CONV weights, FC weights,
     activations of both), each on the edited TEST net with everything else left at the
     proto defaults, stopping after the first width whose ``score + margin/100`` (float
     score, double margin) falls below the baseline; per sweep the chosen width is the last
     passing one before the first failure (32 if 16 fails); then the combined net is scored;
   * ``minifloat``: ``exp_bits`` from the ranges (at least 4), one sweep while
     ``bitwidth - 1 - exp_bits > 0``; the chosen net is written *and scored* (DECISIONS.md);
   * ``integer_power_of_2_weights``: one net, power-of-two weights and 8-bit DFP activations;

4. the edited, upgraded net description (no ``state`` for DFP and POW2) is written to
   ``--model_quantized`` atomically, and Ristretto's summary block is logged word for word.

Every check that can fail (flags, trimming mode, writable outputs, files, weights against the
net, a score output) runs before the first scoring pass. Scoring goes through
``engine.Scorer``, which reuses batches, unchanged prefixes and identical nets and spreads
batches over worker threads, with results bit-identical to plain sequential scoring.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ristretto_cli import parallel
from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import fmt_g, hold_records, logger
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.quantization import edit as E
from ristretto_cli.quantization.engine import RecordingNet, RunRecord, Scorer
from ristretto_cli.quantization.ranges import (
    MEASURED_TYPES,
    IntegerLengths,
    LayerRange,
    RangeRecorder,
    integer_lengths,
    minifloat_exp_bits,
)
from ristretto_cli.scoring import ScoreResult, run_forward_batches

DYNAMIC_FIXED_POINT = "dynamic_fixed_point"
MINIFLOAT = "minifloat"
POWER_OF_TWO = "integer_power_of_2_weights"
TRIMMING_MODES = (DYNAMIC_FIXED_POINT, MINIFLOAT, POWER_OF_TWO)
STATISTICS_ITERATIONS = 10      # Ristretto's fixed number of TRAIN batches for the ranges
FIRST_EXP_BITS = 4              # Ristretto's starting minifloat exponent width
POW2_ACTIVATION_BITS = 8        # Ristretto's fixed activation width in power-of-two mode
POW2_SUMMARY_BITS = 4           # what Ristretto's power-of-two summary line calls the net
#: Types with no input data of their own: a TEST net whose sources are only these is a deploy net.
_NO_DATA = frozenset({"Input", "MemoryData"})


@dataclass
class QuantizeOptions:
    model: str = ""
    weights: str = ""
    model_quantized: str = ""
    trimming_mode: str = ""
    iterations: int = 50
    error_margin: float = 2.0
    gpu: str = ""
    semantics: str = "ristretto"
    score: str | None = None          # output whose first element is the score
    report: str | None = None         # JSON report path
    plot: str | None = None           # PNG plot path
    workers: int = 0                  # 0: one per available core (at most 8)
    seed: int | None = None
    progress: bool = True
    plain: bool = False               # score every net plainly, as Ristretto (reference path)
    memory_mb: int = 1024             # for recorded batches and boundary blobs


@dataclass
class Point:
    """One scored configuration of a sweep."""
    sweep: str
    bit_width: int
    score: float
    passed: bool
    run: RunRecord

    @property
    def result(self) -> ScoreResult:
        return self.run.result


@dataclass
class Sweep:
    key: str            # "conv_weights", "fc_weights", "activations", "minifloat", "power_of_two"
    title: str          # "CONV weights", ...
    points: list[Point] = field(default_factory=list)
    chosen: int = 32


@dataclass
class QuantizeResult:
    options: QuantizeOptions
    net_name: str
    score_output: str
    baseline: RunRecord
    baseline_score: float
    ranges: list[LayerRange]
    lengths: dict[str, IntegerLengths]
    sweeps: list[Sweep]
    final: RunRecord | None
    final_score: float | None
    final_label: str
    exp_bits: int | None
    param: caffe_pb2.NetParameter
    summary: list[str]
    timings: dict[str, float]
    engine: dict
    plot_summary: dict | None = None

    @property
    def threshold(self) -> float:
        return self.baseline_score - self.options.error_margin / 100

    def chosen(self) -> dict[str, int]:
        return {s.key: s.chosen for s in self.sweeps}


# ------------------------------------------------------------------------ checks
def _workers(requested: int) -> int:
    if requested > 0:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _check_flags(o: QuantizeOptions) -> None:
    if not o.model:
        raise RistrettoError("Need a model definition to score.")
    if not o.weights:
        raise RistrettoError("Need model weights to score.")
    if not o.model_quantized:
        raise RistrettoError("Need network description output path.")
    if not o.trimming_mode:
        raise RistrettoError("Need trimming mode.")
    if o.trimming_mode not in TRIMMING_MODES:
        raise RistrettoError(f"Unknown trimming mode: {o.trimming_mode} (valid modes: "
                             f"{', '.join(TRIMMING_MODES)})")
    if o.iterations <= 0:
        raise RistrettoError(f"--iterations must be positive, got {o.iterations}")
    if not math.isfinite(o.error_margin):
        raise RistrettoError(f"--error_margin must be a finite number, got {o.error_margin}")
    if o.workers < 0:
        raise RistrettoError(f"--workers must be 0 (automatic) or positive, got {o.workers}")
    if o.semantics not in ("ristretto", "caffe-cpu"):
        raise RistrettoError(f"unknown semantics '{o.semantics}' (choose ristretto or caffe-cpu)")


def _check_outputs(o: QuantizeOptions) -> None:
    from ristretto_cli.io import check_writable
    check_writable(o.model_quantized)
    for path in (o.report, o.plot):
        if path:
            check_writable(path)
    for a, b in ((o.report, o.model_quantized), (o.plot, o.model_quantized), (o.report, o.plot)):
        if a and b and os.path.abspath(a) == os.path.abspath(b):
            raise RistrettoError("the report, the plot and the quantized net need different paths", path=a)
    if o.plot:
        from ristretto_cli.quantization.plot import require_matplotlib
        require_matplotlib()


def _check_score_net(net, model: str, score: str | None) -> str:
    """The output whose first element is the score; errors for nets that cannot be scored."""
    sources = [layer for layer, bottoms in zip(net.layers, net.bottom_vecs) if not bottoms]
    if not net.output_names or not sources or all(layer.type in _NO_DATA for layer in sources):
        raise RistrettoError(
            "the TEST-phase net has nothing to score: quantize needs data layers and a TEST-phase "
            "output such as an Accuracy layer's (a deploy net with Input layers has neither)", path=model)
    if score is None:
        return net.output_names[0]
    if score not in net.output_names:
        raise RistrettoError(f"--score '{score}' is not an output of the TEST-phase net (outputs: "
                             f"{', '.join(net.output_names)})", path=model)
    return score


def _check_targets(param, train_net, mode: str, model: str) -> None:
    """There must be a layer to quantize, and every layer whose integer lengths the edits
    look up must have range statistics (a Convolution or InnerProduct layer of the TRAIN net).
    Minifloat looks up none; power-of-two's activation edit is the DFP one (substring match)."""
    from ristretto_cli.layers import LAYER_TYPES
    if not E.edited_layers(param, "dfp" if mode == DYNAMIC_FIXED_POINT else "exact"):
        raise RistrettoError("the net has no Convolution or InnerProduct layer to quantize", path=model)
    needs_lengths = [] if mode == MINIFLOAT else E.edited_layers(param, "dfp")
    measured = {n for n, layer in zip(train_net.layer_names, train_net.layers)
                if layer.type in MEASURED_TYPES}
    for name in needs_lengths:
        if name not in measured:
            raise RistrettoError(
                "this layer would be quantized but has no range statistics: only layers of type "
                "Convolution or InnerProduct in the TRAIN-phase net are measured", path=model, layer=name)
    for t in (E.CONV_RISTRETTO, E.FC_RISTRETTO):
        if t not in LAYER_TYPES:
            raise RistrettoError(f"layer type {t} is not available in this installation")


def _phase_test(param) -> caffe_pb2.NetParameter:
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    out.state.phase = caffe_pb2.TEST
    return out


def _copy(param) -> caffe_pb2.NetParameter:
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    return out


def _passes(score: float, baseline: float, margin: float) -> bool:
    """Ristretto's criterion: ``float score + double margin / 100 >= float baseline``."""
    return float(score) + margin / 100 >= float(baseline)


def choose(points: list[Point], baseline: float, margin: float) -> int:
    """The last passing width before the first failure, walking the list from 32."""
    best = 32
    for p in points:
        if _passes(p.score, baseline, margin):
            best = p.bit_width
        else:
            break
    return best


# ------------------------------------------------------------------------ the search
class _Search:
    def __init__(self, o: QuantizeOptions):
        self.o = o
        self.timings: dict[str, float] = {}
        self.t0 = time.perf_counter()

    # ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        from ristretto_cli.io import read_net_param, read_weights
        from ristretto_cli.net import TEST, TRAIN, Net
        o = self.o
        _check_flags(o)
        _check_outputs(o)
        # Read and build everything before printing: a bad input prints only its error line.
        with hold_records() as file_messages:
            self.param = read_net_param(o.model)
            self.weights = read_weights(o.weights)
        with hold_records() as test_messages:
            self.net = Net(self.param, TEST, level=0, semantics=o.semantics, seed=o.seed, verbose=True)
            self.net.copy_trained_layers_from(self.weights, o.weights)
        self.score_output = _check_score_net(self.net, o.model, o.score)
        with hold_records() as train_messages:
            self.train_net = Net(self.param, TRAIN, level=0, semantics=o.semantics, seed=o.seed, verbose=True)
            self.train_net.copy_trained_layers_from(self.weights, o.weights)
        _check_targets(self.param, self.train_net, o.trimming_mode, o.model)
        self.train_messages = train_messages
        if o.gpu:
            logger.warning("no GPU backend is available: running on the CPU (--gpu=%s ignored)", o.gpu)
        else:
            logger.info("Use CPU.")
        file_messages.release()
        test_messages.release()

    # ---------------------------------------------------------------- scoring
    def score(self, param, label: str) -> tuple[RunRecord, float]:
        logger.info("Scoring %s.", label)
        run = self.scorer.score(param, label)
        return run, run.result.score(self.score_output)

    def run(self) -> QuantizeResult:
        o = self.o
        self.setup()
        self.timings["setup"] = time.perf_counter() - self.t0
        self.scorer = Scorer(weights=self.weights, weights_path=o.weights, iterations=o.iterations,
                             semantics=o.semantics, seed=o.seed, workers=self.workers, plain=o.plain,
                             progress=o.progress, memory_bytes=o.memory_mb << 20)
        mode = o.trimming_mode
        kind = "dfp" if mode == DYNAMIC_FIXED_POINT else "exact"
        # Where the coming nets start to differ from the float net: their blobs there are kept.
        groups = (("conv",), ("fc",), ("conv", "fc"))
        boundaries = [E.edited_layers(self.param, kind, kinds) for kinds in groups]

        try:
            return self._search(boundaries)
        finally:
            self.scorer.close()

    def _search(self, boundaries) -> QuantizeResult:
        mode = self.o.trimming_mode
        t = time.perf_counter()
        self.baseline = self.scorer.baseline(
            self.net, lambda: self.scorer.build(self.param, phase=caffe_pb2.TEST, level=0), boundaries)
        self.baseline_score = self.baseline.result.score(self.score_output)
        self.timings["baseline"] = time.perf_counter() - t
        del self.net

        t = time.perf_counter()
        self.ranges = self.statistics()
        self.timings["statistics"] = time.perf_counter() - t

        t = time.perf_counter()
        self.sweeps: list[Sweep] = []
        self.final = None
        self.final_score = None
        self.exp_bits = None
        self.lengths: dict[str, IntegerLengths] = {}
        if mode == DYNAMIC_FIXED_POINT:
            written, summary, label = self.dynamic_fixed_point()
        elif mode == MINIFLOAT:
            written, summary, label = self.minifloat()
        else:
            written, summary, label = self.power_of_two()
        self.timings["search"] = time.perf_counter() - t
        return self.finish(written, summary, label)

    def statistics(self) -> list[LayerRange]:
        """Ristretto's RangeInLayers over exactly 10 TRAIN batches of a fresh net."""
        self.train_messages.release()
        recorder = RangeRecorder()
        net = self.train_net
        logger.info("Running for %d iterations.", STATISTICS_ITERATIONS)
        if net.output_names:
            run_forward_batches(RecordingNet(net, after=recorder.update), STATISTICS_ITERATIONS,
                                log=True, progress=self.o.progress)
        else:  # nothing to print per batch; the ranges are all that matters here
            loss = np.float32(0)
            for _ in range(STATISTICS_ITERATIONS):
                loss = np.float32(loss + net.forward())
                recorder.update(net)
            logger.info("Loss: %s", fmt_g(np.float32(loss / np.float32(STATISTICS_ITERATIONS))))
        del self.train_net
        return recorder.layers

    # ---------------------------------------------------------------- modes
    def _lengths(self, params: bool) -> dict[str, IntegerLengths]:
        table = {}
        for rec in self.ranges:
            if rec.name not in table:  # first match, as Ristretto's lookup
                table[rec.name] = integer_lengths(rec, params=params)
        return table

    def _sweep(self, key: str, title: str, edit, widths) -> Sweep:
        sweep = Sweep(key, title)
        param = _phase_test(self.param)
        for bw in widths:
            edit(param, bw)
            run, score = self.score(param, f"{title} {bw}bit")
            passed = _passes(score, self.baseline_score, self.o.error_margin)
            sweep.points.append(Point(key, bw, score, passed, run))
            if not passed:
                break
        sweep.chosen = choose(sweep.points, self.baseline_score, self.o.error_margin)
        return sweep

    def dynamic_fixed_point(self):
        self.lengths = self._lengths(params=True)
        for rec in self.ranges:
            il = self.lengths[rec.name]
            logger.info("Layer %s, integer length input=%d, integer length output=%d, integer length "
                        "parameters=%d", rec.name, il.il_in, il.il_out, il.il_params)
        lengths = E.lengths_lookup(self.lengths)
        edit = E.edit_dynamic_fixed_point
        widths = _halvings(16, lambda bw: bw > 0)
        conv = self._sweep("conv_weights", "CONV weights", lambda p, bw: edit(
            p, lengths, conv=True, fc=False, parameters=True, activations=False, bw_conv=bw), widths)
        fc = self._sweep("fc_weights", "FC weights", lambda p, bw: edit(
            p, lengths, conv=False, fc=True, parameters=True, activations=False, bw_fc=bw), widths)
        act = self._sweep("activations", "layer activations", lambda p, bw: edit(
            p, lengths, conv=True, fc=True, parameters=False, activations=True, bw_in=bw, bw_out=bw), widths)
        self.sweeps = [conv, fc, act]
        bw_conv, bw_fc, bw_out = conv.chosen, fc.chosen, act.chosen
        bw_in = bw_out
        param = _phase_test(self.param)
        E.edit_dynamic_fixed_point(param, lengths, conv=True, fc=True, parameters=True, activations=True,
                                   bw_conv=bw_conv, bw_fc=bw_fc, bw_in=bw_in, bw_out=bw_out)
        label = f"{bw_conv}bit CONV weights, {bw_fc}bit FC weights, {bw_out}bit activations"
        self.final, self.final_score = self.score(param, f"dynamic fixed point net ({label})")
        param.ClearField("state")
        summary = _summary_head(self.baseline_score) + ["Dynamic fixed point CONV", "weights: "]
        summary += [f"{p.bit_width}bit: \t{fmt_g(np.float32(p.score))}" for p in conv.points]
        summary += ["Dynamic fixed point FC", "weights: "]
        summary += [f"{p.bit_width}bit: \t{fmt_g(np.float32(p.score))}" for p in fc.points]
        summary += ["Dynamic fixed point layer", "activations:"]
        summary += [f"{p.bit_width}bit: \t{fmt_g(np.float32(p.score))}" for p in act.points]
        summary += ["Dynamic fixed point net:", f"{bw_conv}bit CONV weights,", f"{bw_fc}bit FC weights,",
                    f"{bw_out}bit layer activations:", f"Accuracy: {fmt_g(np.float32(self.final_score))}",
                    "Please fine-tune."]
        return param, summary, label

    def minifloat(self):
        self.exp_bits = minifloat_exp_bits(self.ranges, FIRST_EXP_BITS)
        e = self.exp_bits
        widths = _halvings(16, lambda bw: bw - 1 - e > 0)
        sweep = self._sweep("minifloat", "minifloat",
                            lambda param, bw: E.edit_minifloat(param, bw, e), widths)
        self.sweeps = [sweep]
        best = sweep.chosen
        # Ristretto writes the file as read (any state kept) with the best width...
        param = _copy(self.param)
        E.edit_minifloat(param, best, e)
        # ...without scoring it; we score the net we write (DECISIONS.md).
        label = f"{best}bit minifloat ({best - e - 1} mantissa bits, {e} exponent bits)"
        self.final, self.final_score = self.score(_phase_test(param), f"minifloat net ({label})")
        logger.info("Minifloat net written: %s: %s", label, fmt_g(np.float32(self.final_score)))
        summary = _summary_head(self.baseline_score) + ["Minifloat net:"]
        summary += [f"{p.bit_width}bit: \t{fmt_g(np.float32(p.score))}" for p in sweep.points]
        summary += ["Please fine-tune."]
        return param, summary, label

    def power_of_two(self):
        self.lengths = self._lengths(params=False)
        lengths = E.lengths_lookup(self.lengths)
        param = _phase_test(self.param)
        E.edit_power_of_two(param)
        bits = POW2_ACTIVATION_BITS
        E.edit_dynamic_fixed_point(param, lengths, conv=True, fc=True, parameters=False, activations=True,
                                   bw_in=bits, bw_out=bits)
        label = f"power-of-two weights, {bits}bit activations"
        run, score = self.score(param, label)
        point = Point("power_of_two", POW2_SUMMARY_BITS, score,
                      _passes(score, self.baseline_score, self.o.error_margin), run)
        self.sweeps = [Sweep("power_of_two", "power-of-two weights", [point], POW2_SUMMARY_BITS)]
        self.final, self.final_score = run, score
        param.ClearField("state")
        summary = ["------------------------------", "Network accuracy analysis for",
                   "Integer-power-of-two weights", "in Convolutional (CONV) and",
                   "fully connected (FC) layers.",
                   f"Baseline 32bit float: {fmt_g(np.float32(self.baseline_score))}", "Quantized net:",
                   f"{POW2_SUMMARY_BITS}bit: \t{fmt_g(np.float32(score))}", "Please fine-tune."]
        return param, summary, label

    # ---------------------------------------------------------------- results
    def finish(self, param, summary, label) -> QuantizeResult:
        from ristretto_cli.io import write_net_text
        o = self.o
        t = time.perf_counter()
        write_net_text(o.model_quantized, param)
        result = QuantizeResult(
            options=o, net_name=self.param.name, score_output=self.score_output, baseline=self.baseline,
            baseline_score=self.baseline_score, ranges=self.ranges, lengths=self.lengths, sweeps=self.sweeps,
            final=self.final, final_score=self.final_score, final_label=label, exp_bits=self.exp_bits,
            param=param, summary=summary, timings=self.timings,
            engine={"workers": self.scorer.workers, "plain": o.plain, "runs_computed": self.scorer.runs,
                    "blas_threads_per_worker": self.blas_threads})
        if o.plot:
            from ristretto_cli.quantization.plot import plot_search
            result.plot_summary = plot_search(result, o.plot)
        self.timings["write"] = time.perf_counter() - t
        self.timings["total"] = time.perf_counter() - self.t0
        if o.report:
            from ristretto_cli.quantization.report import write_report
            write_report(result, o.report)
        for line in summary:
            logger.info("%s", line)
        return result


def _halvings(start: int, keep) -> list[int]:
    """Ristretto's ``for (bw = start; keep(bw); bw /= 2)`` (integer halving)."""
    out, bw = [], start
    while keep(bw):
        out.append(bw)
        bw //= 2
    return out


def _summary_head(baseline: float) -> list[str]:
    return ["------------------------------", "Network accuracy analysis for",
            "Convolutional (CONV) and fully", "connected (FC) layers.",
            f"Baseline 32bit float: {fmt_g(np.float32(baseline))}"]


def quantize(options: QuantizeOptions) -> QuantizeResult:
    """Run the search; writes ``model_quantized`` (and the report and plot, if asked)."""
    search = _Search(options)
    search.workers, search.blas_threads = _workers(options.workers), None
    limiter = _blas_single_thread()
    if limiter is None:
        search.workers = 1  # without control over BLAS threads, workers would oversubscribe
    else:
        search.blas_threads = 1
    # One net per core: each net's own work stays on its thread.
    threads = parallel.limited(1) if search.workers > 1 else contextlib.nullcontext()
    with limiter if limiter is not None else contextlib.nullcontext(), threads:
        return search.run()


def _blas_single_thread():
    """A context that runs BLAS single-threaded, or None when its threads cannot be set.
    Single-threaded BLAS makes the results independent of the number of workers and cores."""
    return parallel.blas_single_threaded() if parallel.blas_controllable() else None


__all__ = ["QuantizeOptions", "QuantizeResult", "Sweep", "Point", "TRIMMING_MODES", "quantize", "choose"]
