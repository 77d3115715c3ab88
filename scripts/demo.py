#!/usr/bin/env python3
"""The ristretto-cli demo: LeNet on MNIST from 32-bit float to dynamic fixed point.

Runs the real command line, step by step, on the bundled LeNet and MNIST (models/):

  1. convert_mnist_data  build the MNIST train and test LMDBs
  2. test                score the float net
  3. quantize            Ristretto's bit-width search (dynamic fixed point, 1 % error margin)
  4. test                score the quantized net
  5. train               fine-tune the quantized net from the float weights
  6. test                score the fine-tuned weights

then prints one summary table and writes it, with the accuracy-vs-bit-width plot of step 3,
to the work folder. Each command is printed before it runs (copy it to run it yourself, from
the repository root); the tool's own log of each step goes to WORK/logs/.

    make demo                        # or: .venv/bin/python scripts/demo.py
    make demo DEMO_ARGS=--quick      # fewer iterations everywhere (CI)

Everything the demo writes lives in the work folder (default out/demo/), which it empties
at the start of every run, so a rerun starts clean. The bundled files are never changed: the
demo writes an adapted copy of models/lenet/lenet_train_test.prototxt whose two data sources
point into the work folder (the LMDBs keep Caffe's examples/mnist/ layout there).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
MARKER = ".ristretto-demo"  # the demo only ever empties a folder that carries this file


@dataclass(frozen=True)
class Settings:
    test_iterations: int      # TEST batches of 100 images per `ristretto test`
    quantize_iterations: int  # TEST batches per scoring run of `ristretto quantize`
    finetune_iterations: int  # solver iterations (batches of 64 training images)


FULL = Settings(test_iterations=100, quantize_iterations=100, finetune_iterations=300)
QUICK = Settings(test_iterations=10, quantize_iterations=10, finetune_iterations=50)

# The fine-tuning solver: Ristretto's own recipe (its SqueezeNet demo's solver_finetune.prototxt:
# Adam, base_lr 1e-6, fixed). The quantized net's train phase rounds the weights stochastically
# and leaves the activations in float; the solver updates the full-precision weights and the
# snapshot holds them (docs/number-formats.md). Larger steps cost accuracy in a few hundred
# iterations with LeNet's 2-bit convolution weights (docs/examples/lenet-demo.md).
SOLVER = """\
# Fine-tuning of the quantized LeNet, written by scripts/demo.py.
net: "{net}"
type: "Adam"
base_lr: {base_lr}
lr_policy: "fixed"
momentum: 0.9
momentum2: 0.999
delta: 0.00000001
weight_decay: 0.0002
max_iter: {max_iter}
display: {display}
average_loss: {display}
snapshot: 0
snapshot_prefix: "{prefix}"
random_seed: 1
solver_mode: CPU
"""
BASE_LR = "0.000001"


@dataclass
class Row:
    step: str
    command: str
    fmt: str = "-"
    bits: str = "-"
    accuracy: str = "-"
    loss: str = "-"
    seconds: float = 0.0


class StepFailed(Exception):
    pass


def display_path(path: Path) -> str:
    """``path`` as the user types it from the repository root (absolute when outside it)."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def ristretto_command() -> list[str]:
    """The console script beside this interpreter, else ``python -m ristretto_cli``."""
    script = Path(sys.executable).parent / ("ristretto.exe" if os.name == "nt" else "ristretto")
    if script.exists():
        return [display_path(script)]
    return [display_path(Path(sys.executable)), "-m", "ristretto_cli"]


class Demo:
    def __init__(self, work: Path, settings: Settings, quick: bool):
        self.work = work
        self.settings = settings
        self.quick = quick
        self.tool = ristretto_command()
        self.logs = work / "logs"
        self.rows: list[Row] = []
        self.step_count = 6
        self.step_index = 0
        self.has_plot = False

    # ------------------------------------------------------------------ running commands
    def header(self, title: str) -> None:
        self.step_index += 1
        print(f"\n[{self.step_index}/{self.step_count}] {title}", flush=True)

    def run(self, args: list[str], log_name: str) -> tuple[float, str]:
        """Print and run one ristretto command from the repository root; return (seconds, log)."""
        command = self.tool + [str(a) for a in args]
        print("  $ " + shlex.join(command), flush=True)
        log_path = self.logs / log_name
        start = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        text = log_path.read_text(encoding="utf-8", errors="replace")
        if done.returncode != 0:
            tail = "\n".join("    " + line for line in text.splitlines()[-15:])
            raise StepFailed(f"the command failed (exit status {done.returncode}); the end of "
                             f"{display_path(log_path)}:\n{tail}")
        return seconds, text

    def pointer(self, seconds: float, *log_names: str) -> None:
        logs = ", ".join(display_path(self.logs / n) for n in log_names)
        print(f"  {seconds:.1f} s; log: {logs}", flush=True)

    # ------------------------------------------------------------------ the steps
    def prepare(self) -> None:
        """Empty (or create) the work folder; refuse a folder the demo did not make."""
        if self.work.exists():
            if not self.work.is_dir():
                raise StepFailed(f"{display_path(self.work)} exists and is not a folder")
            if any(self.work.iterdir()) and not (self.work / MARKER).exists():
                raise StepFailed(f"{display_path(self.work)} is not empty and was not made by the "
                                 "demo; choose another --workdir or remove it yourself")
            shutil.rmtree(self.work)
        self.logs.mkdir(parents=True)
        (self.work / MARKER).write_text("made by scripts/demo.py; emptied at every run\n")

    def build_data(self) -> None:
        self.header("Build the MNIST LMDBs (60,000 training and 10,000 test images)")
        lmdb_dir = self.work / "examples" / "mnist"
        total = 0.0
        for split, prefix in (("train", "train"), ("test", "t10k")):
            seconds, _ = self.run(["convert_mnist_data",
                                   display_path(MODELS / "mnist" / f"{prefix}-images-idx3-ubyte.gz"),
                                   display_path(MODELS / "mnist" / f"{prefix}-labels-idx1-ubyte.gz"),
                                   display_path(lmdb_dir / f"mnist_{split}_lmdb")],
                                  f"1_convert_mnist_{split}.log")
            total += seconds
        self.pointer(total, "1_convert_mnist_train.log", "1_convert_mnist_test.log")

        # The bundled train/test net reads examples/mnist/mnist_{train,test}_lmdb relative to the
        # working folder; the copy reads them from the work folder, relative to the repository.
        source = (MODELS / "lenet" / "lenet_train_test.prototxt").read_text(encoding="utf-8")
        prefix = display_path(lmdb_dir) + "/"
        adapted, count = re.subn(r'(source:\s*")examples/mnist/', lambda m: m.group(1) + prefix, source)
        if count != 2:
            raise StepFailed("models/lenet/lenet_train_test.prototxt: expected two data sources under "
                             f"examples/mnist/, found {count}")
        self.net = self.work / "lenet_train_test.prototxt"
        self.net.write_text("# models/lenet/lenet_train_test.prototxt with the data sources in "
                            f"{display_path(self.work)}/ (scripts/demo.py)\n" + adapted, encoding="utf-8")
        print(f"  wrote {display_path(self.net)}: the bundled net, reading the LMDBs above")
        self.rows.append(Row("1 data", "convert_mnist_data x2", seconds=total))

    def score(self, step: str, title: str, model: Path, weights: Path, log_name: str,
              fmt: str, bits: str) -> Row:
        self.header(title)
        seconds, log = self.run(["test", "--model", display_path(model), "--weights", display_path(weights),
                                 "--iterations", self.settings.test_iterations], log_name)
        outputs = final_outputs(log)
        row = Row(step, "test", fmt, bits, outputs.get("accuracy", "?"), outputs.get("loss", "?"), seconds)
        images = self.settings.test_iterations * 100
        print(f"  accuracy {row.accuracy}, loss {row.loss} on {images:,} test images")
        self.pointer(seconds, log_name)
        self.rows.append(row)
        return row

    def quantize(self, weights: Path) -> None:
        self.header("Quantize: Ristretto's search for dynamic fixed point bit widths")
        self.quantized = self.work / "quantized.prototxt"
        self.report = self.work / "quantize_report.json"
        self.plot = self.work / "accuracy_vs_bits.png"
        args = ["quantize", "--model", display_path(self.net), "--weights", display_path(weights),
                "--model_quantized", display_path(self.quantized),
                "--trimming_mode", "dynamic_fixed_point",
                "--iterations", self.settings.quantize_iterations, "--error_margin", "1",
                "--report", display_path(self.report)]
        has_plot = importlib.util.find_spec("matplotlib") is not None
        if has_plot:
            args += ["--plot", display_path(self.plot)]
        else:
            print("  (matplotlib is not installed, so no plot: pip install 'ristretto-cli[plot]')")
        seconds, _ = self.run(args, "3_quantize.log")
        report = json.loads(self.report.read_text(encoding="utf-8"))
        chosen = report["chosen"]
        self.bits = f"CONV {chosen['conv_weights']} / FC {chosen['fc_weights']} / act {chosen['activations']}"
        final = report["final"]
        print(f"  chose {chosen['conv_weights']}-bit CONV weights, {chosen['fc_weights']}-bit FC weights, "
              f"{chosen['activations']}-bit activations: accuracy {final['score_text']} "
              f"(float {report['baseline']['score_text']}, allowed drop 1 point)")
        print(f"  wrote {display_path(self.quantized)}, {display_path(self.report)}"
              + (f", {display_path(self.plot)}" if has_plot else ""))
        self.pointer(seconds, "3_quantize.log")
        self.rows.append(Row("3 quantize", "quantize", "dynamic fixed point", self.bits,
                             final["score_text"], f"{final['loss']:.6g}", seconds))
        self.has_plot = has_plot

    def finetune(self, weights: Path) -> Path:
        self.header("Fine-tune the quantized net from the float weights")
        iterations = self.settings.finetune_iterations
        prefix = self.work / "lenet_quantized_finetuned"
        solver = self.work / "finetune_solver.prototxt"
        solver.write_text(SOLVER.format(net=display_path(self.quantized), base_lr=BASE_LR,
                                        max_iter=iterations, display=max(10, iterations // 6),
                                        prefix=display_path(prefix)), encoding="utf-8")
        print(f"  wrote {display_path(solver)}: Adam, base_lr {float(BASE_LR):g}, "
              f"{iterations} iterations of 64 images, snapshot at the end")
        seconds, log = self.run(["train", "--solver", display_path(solver),
                                 "--weights", display_path(weights)], "5_finetune.log")
        snapshot = Path(f"{prefix}_iter_{iterations}.caffemodel")
        if not (REPO / snapshot).exists():
            raise StepFailed(f"training finished without writing {display_path(snapshot)}")
        losses = re.findall(r"\] Iteration \d+(?: \([^)]*\))?, loss = (\S+)", log)
        if losses:
            window = max(10, iterations // 6)
            print(f"  training loss: {losses[0]} on the first batch, {losses[-1]} over the last {window}")
        print(f"  wrote {display_path(snapshot)} (full-precision weights)")
        self.pointer(seconds, "5_finetune.log")
        self.rows.append(Row("5 fine-tune", "train", "dynamic fixed point", self.bits, "-",
                             f"{losses[-1]} (train)" if losses else "?", seconds))
        return snapshot

    # ------------------------------------------------------------------ the whole run
    def main(self) -> int:
        mode = "quick mode" if self.quick else "full mode"
        s = self.settings
        print(f"ristretto-cli demo ({mode}): LeNet on MNIST, "
              "32-bit float -> dynamic fixed point -> fine-tuned")
        print(f"Work folder {display_path(self.work)}/; every command runs from {REPO}; "
              f"scores over {s.test_iterations * 100:,} test images")
        start = time.perf_counter()
        self.prepare()
        float_weights = MODELS / "lenet" / "lenet_iter_10000.caffemodel"
        self.build_data()
        self.score("2 float", "Score the float net", self.net, float_weights, "2_test_float.log",
                   "float32", "32 (float)")
        self.quantize(float_weights)
        quantized = self.score("4 quantized", "Score the quantized net (float weights, trimmed as it runs)",
                               self.quantized, float_weights, "4_test_quantized.log",
                               "dynamic fixed point", self.bits)
        snapshot = self.finetune(float_weights)
        tuned = self.score("6 fine-tuned", "Score the fine-tuned quantized net", self.quantized,
                           snapshot, "6_test_finetuned.log", "dynamic fixed point", self.bits)
        total = time.perf_counter() - start
        self.summary(total, quantized, tuned)
        return 0

    def summary(self, total: float, quantized: Row, tuned: Row) -> None:
        headers = ["step", "command", "format", "bit widths", "accuracy", "loss", "wall time"]
        rows = [[r.step, r.command, r.fmt, r.bits, r.accuracy, r.loss, f"{r.seconds:.1f} s"]
                for r in self.rows]
        rows.append(["total", "", "", "", "", "", f"{total:.1f} s"])
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

        def line(cells):
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        text = [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
        try:
            change = (float(tuned.accuracy) - float(quantized.accuracy)) * 100
            verdict = (f"Fine-tuning changed the quantized net's accuracy by {change:+.2f} points "
                       f"({quantized.accuracy} -> {tuned.accuracy}).")
        except ValueError:
            verdict = "Could not read the accuracies back from the logs."
        note = ("bit widths: CONV weights / FC weights / activations (inputs and outputs) of the "
                "ConvolutionRistretto and FcRistretto layers")
        print("\nSummary")
        print("\n".join(text))
        print(verdict)
        print(note)
        summary = self.work / "summary.txt"
        lines = [f"ristretto-cli demo ({'quick' if self.quick else 'full'} mode), "
                 f"scores over {self.settings.test_iterations * 100:,} MNIST test images", ""]
        lines += text + ["", verdict, note]
        if self.has_plot:
            lines.append(f"plot of the quantize search: {self.plot.name}")
        summary.write_text("\n".join(lines) + "\n", encoding="utf-8")
        where = display_path(summary)
        if self.has_plot:
            where += f" and {display_path(self.plot)} (accuracy against bit width)"
        print(f"Wrote {where}.")


def final_outputs(log: str) -> dict[str, str]:
    """The mean outputs `ristretto test` prints last (``] accuracy = 0.9909``), as printed."""
    outputs = {}
    for name, value in re.findall(r"\] (\w+) = (\S+)", log.split("] Loss: ")[-1]):
        outputs[name] = value
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="LeNet on MNIST: build the LMDBs, test, quantize to dynamic fixed point, test, "
                    "fine-tune, test; one summary table at the end.")
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer iterations everywhere: {QUICK.test_iterations} test batches, quantize "
                             f"--iterations {QUICK.quantize_iterations}, {QUICK.finetune_iterations} "
                             "fine-tuning iterations (for CI)")
    parser.add_argument("--workdir", default=str(REPO / "out" / "demo"),
                        help="where everything is written; emptied first (default: out/demo)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("ristretto_cli") is None:
        print(f"demo: ristretto_cli is not installed for {sys.executable}; follow the README's set-up "
              "first (python3 -m venv .venv && .venv/bin/pip install -e '.[test]')", file=sys.stderr)
        return 1
    demo = Demo(Path(os.path.abspath(args.workdir)), QUICK if args.quick else FULL, args.quick)
    try:
        return demo.main()
    except StepFailed as exc:
        print(f"\ndemo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
