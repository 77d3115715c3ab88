"""``ristretto quantize`` against the real Ristretto run in reference/quantize_lenet_dfp, the
other modes on LeNet and CIFAR-10 quick, the written nets in ``test``/``train``, the report and
the plot.

The reference run (reference/README.md §5): LeNet, 100 TEST batches, error margin 1, from a
folder where examples/mnist/mnist_test_lmdb is reference/mnist_test_lmdb and
examples/mnist/mnist_train_lmdb the 60k train LMDB (ours is byte-identical to Caffe's).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import SHARED_DATA, shared_data
from data_support import (  # noqa: F401
    capture_log,
    lay_out_mnist,
    make_mnist_lmdbs,
    message,
    run_cli,
)

from ristretto_cli.io import read_net_param
from ristretto_cli.io.textformat import parse_text
from ristretto_cli.proto import caffe_pb2

REF = "reference/quantize_lenet_dfp"
LENET = "models/lenet/lenet_train_test.prototxt"
LENET_WEIGHTS = "models/lenet/lenet_iter_10000.caffemodel"
CIFAR = "models/cifar10_quick/cifar10_quick_train_test.prototxt"
CIFAR_WEIGHTS = "models/cifar10_quick/cifar10_quick_iter_4000.caffemodel"
SCORING = re.compile(r"^(Batch \d+, \w+ = |Loss: |\w+ = )")


def _runs(messages: list[str]) -> list[list[str]]:
    """Each scoring run: its "Running for" line and the scoring lines after it."""
    runs: list[list[str]] = []
    for msg in messages:
        if msg.startswith("Running for "):
            runs.append([msg])
        elif runs and SCORING.match(msg):
            runs[-1].append(msg)
    return runs


def _value(line: str) -> float:
    text = line.split(":", 1)[1] if line.startswith("Loss:") else line.split(" = ", 1)[1]
    return float(text.split()[0])


def _name(line: str) -> str:
    return line.split(":", 1)[0] if line.startswith("Loss:") else line.split(" = ", 1)[0]


def _summary(messages: list[str]) -> list[str]:
    start = max(i for i, m in enumerate(messages) if m == "------------------------------")
    return messages[start:]


def _reference_messages() -> list[str]:
    return [message(x) for x in shared_data(f"{REF}/quantize.log").read_text().splitlines()]


@pytest.fixture(scope="session")
def mnist_lmdbs(tmp_path_factory):
    return make_mnist_lmdbs(tmp_path_factory)


# ---------------------------------------------------------------------- the LeNet DFP reproduction
@pytest.fixture(scope="module")
def lenet_dfp(mnist_lmdbs, tmp_path_factory):
    """The reference command, with Ristretto's CPU arithmetic, plus a report and a plot."""
    from ristretto_cli.cli import main
    run = tmp_path_factory.mktemp("quantize_lenet")
    lay_out_mnist(run, mnist_lmdbs)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        with capture_log() as log:
            status = main(["quantize", f"--model={SHARED_DATA / LENET}", f"--weights={SHARED_DATA / LENET_WEIGHTS}",
                           "--model_quantized=quantized.prototxt", "--trimming_mode=dynamic_fixed_point",
                           "--iterations=100", "--error_margin=1", "--semantics", "caffe-cpu",
                           "--report", "report.json", "--plot", "plot.png"])
    assert status == 0
    return run, log.messages


@pytest.mark.slow
def test_integer_lengths_match_the_reference(lenet_dfp):
    _, ours = lenet_dfp
    pick = [m for m in ours if m.startswith("Layer ")]
    assert pick == [m for m in _reference_messages() if m.startswith("Layer ")]
    assert pick[0] == "Layer conv1, integer length input=0, integer length output=2, integer length parameters=1"


@pytest.mark.slow
def test_summary_block_is_ristrettos_word_for_word(lenet_dfp):
    _, ours = lenet_dfp
    summary = _summary(ours)
    assert summary == _summary(_reference_messages())
    assert summary[6] == "weights: " and summary[7] == "16bit: \t0.9909"
    assert summary[-6:] == ["Dynamic fixed point net:", "2bit CONV weights,", "4bit FC weights,",
                            "8bit layer activations:", "Accuracy: 0.9848", "Please fine-tune."]


@pytest.mark.slow
def test_every_scoring_run_matches_the_reference(lenet_dfp):
    """All 15 runs (baseline, 10 statistics batches, 5 + 4 + 3 sweep points, the final net): every
    accuracy line and every accuracy mean is identical. Loss lines come out of float32 GEMMs whose
    summation order no NumPy build shares with OpenBLAS, and in a quantized net a value that lands
    on a rounding boundary of its grid can then round the other way: per-batch losses of the float
    runs agree to 1e-5 relative, those of the quantized nets to 1e-3, all means to 2e-5."""
    _, ours = lenet_dfp
    ours, ref = _runs(ours), _runs(_reference_messages())
    assert len(ours) == len(ref) == 15
    assert [r[0] for r in ours] == ["Running for 100 iterations.", "Running for 10 iterations."] + \
        ["Running for 100 iterations."] * 13
    float_runs = {0, 1}  # the baseline and the statistics run
    accuracy_lines = 0
    for i, (got, want) in enumerate(zip(ours, ref)):
        assert len(got) == len(want), i
        for g, w in zip(got, want):
            assert _name(g) == _name(w), (i, g, w)
            if "accuracy" in g:
                assert g == w, (i, g, w)
                accuracy_lines += 1
            elif g.startswith("Batch "):
                rel = 1e-5 if i in float_runs else 1e-3
                assert abs(_value(g) - _value(w)) <= 1e-8 + rel * abs(_value(w)), (i, g, w)
            elif g != w:
                assert abs(_value(g) - _value(w)) <= 2e-5 * abs(_value(w)), (i, g, w)
    assert accuracy_lines == 14 * 101
    assert ours[-1][-2:] == ["accuracy = 0.9848", "loss = 0.0726183 (* 1 = 0.0726183 loss)"]


@pytest.mark.slow
def test_written_prototxt_is_byte_identical(lenet_dfp):
    run, _ = lenet_dfp
    ours = (run / "quantized.prototxt").read_bytes()
    theirs = shared_data(f"{REF}/quantized.prototxt").read_bytes()
    a = parse_text(ours.decode(), caffe_pb2.NetParameter())
    b = parse_text(theirs.decode(), caffe_pb2.NetParameter())
    assert a == b  # field by field
    assert ours == theirs
    q = {lp.name: lp.quantization_param for lp in a.layer if lp.HasField("quantization_param")}
    assert (q["conv1"].bw_params, q["conv1"].fl_params, q["conv1"].fl_layer_in, q["conv1"].fl_layer_out) == (2, 1, 8, 6)
    assert (q["ip1"].bw_params, q["ip1"].fl_params) == (4, 6)
    assert not a.HasField("state")


@pytest.mark.slow
def test_written_net_scores_as_in_caffe_test(lenet_dfp, capsys):
    """``ristretto test`` of the written net with the float weights, Ristretto's CPU arithmetic:
    the reference caffe_test_quantized.log (accuracy 0.9848, loss 0.0726183)."""
    run, _ = lenet_dfp
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        status, lines = run_cli(capsys, "test", "--model=quantized.prototxt",
                                f"--weights={SHARED_DATA / LENET_WEIGHTS}", "--iterations=100",
                                "--semantics=caffe-cpu")
    assert status == 0
    got = [m for m in map(message, lines) if SCORING.match(m)]
    want = [m for m in map(message, shared_data(f"{REF}/caffe_test_quantized.log").read_text().splitlines())
            if SCORING.match(m)]
    assert len(got) == len(want) == 203
    for g, w in zip(got, want):
        if "accuracy" in g:
            assert g == w
        else:
            assert abs(_value(g) - _value(w)) <= 1e-8 + 1e-5 * abs(_value(w)), (g, w)
    assert got[-3:] == ["Loss: 0.0726183", "accuracy = 0.9848", "loss = 0.0726183 (* 1 = 0.0726183 loss)"]


@pytest.mark.slow
def test_written_net_trains(lenet_dfp, capsys):
    """A few solver iterations on the written net: TRAIN uses stochastically rounded weights and
    float activations, the TEST net trims; the losses stay finite."""
    run, _ = lenet_dfp
    (run / "solver.prototxt").write_text(
        'net: "quantized.prototxt"\ntest_iter: 2\ntest_interval: 2\nbase_lr: 0.001\nmomentum: 0.9\n'
        'lr_policy: "fixed"\ndisplay: 1\nmax_iter: 4\nsnapshot_prefix: "ft"\nsolver_mode: CPU\nrandom_seed: 1\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        status, lines = run_cli(capsys, "train", "--solver=solver.prototxt",
                                f"--weights={SHARED_DATA / LENET_WEIGHTS}", "--semantics=caffe-cpu")
    assert status == 0, lines[-3:]
    msgs = [message(x) for x in lines]
    losses = [float(m.rsplit("= ", 1)[1]) for m in msgs if re.match(r"Iteration \d+ \(.*\), loss = ", m)]
    assert len(losses) >= 4 and all(0 <= v < 1 for v in losses)
    tests = [m for m in msgs if m.startswith("    Test net output #0: accuracy = ")]
    assert len(tests) >= 2 and all(float(t.rsplit("= ", 1)[1]) > 0.9 for t in tests)
    assert (run / "ft_iter_4.caffemodel").exists()


@pytest.mark.slow
def test_report_holds_every_measurement(lenet_dfp):
    run, _ = lenet_dfp
    r = json.loads((run / "report.json").read_text())
    assert (r["trimming_mode"], r["semantics"], r["iterations"], r["error_margin"]) == \
        ("dynamic_fixed_point", "caffe-cpu", 100, 1.0)
    assert r["score_output"] == "accuracy" and r["baseline"]["score_text"] == "0.9909"
    assert r["baseline"]["outputs"]["loss"] == [pytest.approx(0.0289774, rel=1e-5)]
    assert r["threshold"] == pytest.approx(r["baseline"]["score"] - 0.01)
    assert [(p["sweep"], p["bit_width"], p["score_text"], p["passed"]) for p in r["points"]] == [
        ("conv_weights", 16, "0.9909", True), ("conv_weights", 8, "0.991", True),
        ("conv_weights", 4, "0.9906", True), ("conv_weights", 2, "0.9867", True),
        ("conv_weights", 1, "0.0974", False), ("fc_weights", 16, "0.9909", True),
        ("fc_weights", 8, "0.9911", True), ("fc_weights", 4, "0.9905", True),
        ("fc_weights", 2, "0.9009", False), ("activations", 16, "0.99", True),
        ("activations", 8, "0.99", True), ("activations", 4, "0.9665", False)]
    assert all(set(p["outputs"]) == {"accuracy", "loss"} and p["seconds"] > 0 for p in r["points"])
    assert r["chosen"] == {"conv_weights": 2, "fc_weights": 4, "activations": 8}
    assert r["final"]["score_text"] == "0.9848"
    assert r["final"]["outputs"]["loss"] == [pytest.approx(0.0726183, rel=1e-6)]
    layers = {x["name"]: x for x in r["layers"]}
    assert list(layers) == ["conv1", "conv2", "ip1", "ip2"]
    assert (layers["conv1"]["il_in"], layers["conv1"]["il_out"], layers["conv1"]["il_params"]) == (0, 2, 1)
    assert layers["conv1"]["max_in"] == pytest.approx(255 / 256)
    assert layers["ip2"]["max_in"] == layers["ip1"]["max_out"]  # measured after relu1, in place
    assert {"setup", "baseline", "statistics", "search", "total"} <= set(r["timings"])
    assert r["summary"][-1] == "Please fine-tune."


@pytest.mark.slow
def test_plot_is_a_png_with_its_summary(lenet_dfp):
    from ristretto_cli.quantization.plot import HEIGHT, WIDTH, png_size, read_png_summary
    run, _ = lenet_dfp
    data = (run / "plot.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_size(data) == (WIDTH, HEIGHT) == (900, 720)
    summary = read_png_summary(data)
    report = json.loads((run / "report.json").read_text())
    assert summary == report["plot"]
    counts = {s["key"]: len(s["points"]) for s in report["sweeps"]}
    assert [(s["name"], s["points"], s["chosen"]) for s in summary["series"]] == [
        ("CONV weights", counts["conv_weights"], 2), ("FC weights", counts["fc_weights"], 4),
        ("layer activations", counts["activations"], 8)]
    assert [s["points"] for s in summary["series"]] == [5, 4, 3]
    assert [x["name"] for x in summary["lines"]] == ["baseline", "threshold", "final"]
    assert "LeNet" in summary["title"] and "dynamic fixed point" in summary["title"]


# ---------------------------------------------------------------------- default semantics, other modes
@pytest.mark.slow
def test_default_semantics_run(mnist_lmdbs, tmp_path, monkeypatch):
    """Ristretto's GPU rounding (ties to even): same ranges, same baseline; its own decisions."""
    from ristretto_cli.quantization.search import QuantizeOptions, quantize
    lay_out_mnist(tmp_path, mnist_lmdbs)
    monkeypatch.chdir(tmp_path)
    with capture_log() as log:
        result = quantize(QuantizeOptions(
            model=str(SHARED_DATA / LENET), weights=str(SHARED_DATA / LENET_WEIGHTS),
            model_quantized="q.prototxt", trimming_mode="dynamic_fixed_point", iterations=100,
            error_margin=1, progress=False))
    msgs = log.messages
    assert [m for m in msgs if m.startswith("Layer ")] == [m for m in _reference_messages() if m.startswith("Layer ")]
    assert result.summary[4] == "Baseline 32bit float: 0.9909"
    print("default semantics summary:", *result.summary, sep="\n  ")
    assert result.summary[-1] == "Please fine-tune."
    read_net_param("q.prototxt")


def _mode_run(tmp_path, model, weights, mode, iterations, **kw):
    from ristretto_cli.quantization.search import QuantizeOptions, quantize
    out = tmp_path / f"{mode}.prototxt"
    with capture_log() as log:
        result = quantize(QuantizeOptions(model=str(model), weights=str(weights), model_quantized=str(out),
                                          trimming_mode=mode, iterations=iterations, progress=False, **kw))
    return result, log.messages, read_net_param(out)


def _check_mode(result, msgs, written, mode):
    qtypes = {lp.name: lp.type for lp in written.layer if lp.HasField("quantization_param")}
    assert qtypes and set(qtypes.values()) <= {"ConvolutionRistretto", "FcRistretto"}
    qp = caffe_pb2.QuantizationParameter
    if mode == "minifloat":
        assert result.summary[5] == "Minifloat net:" and result.exp_bits >= 4
        best = result.sweeps[0].chosen
        for lp in written.layer:
            if lp.HasField("quantization_param"):
                q = lp.quantization_param
                assert (q.precision, q.mant_bits + q.exp_bits + 1, q.exp_bits) == (qp.MINIFLOAT, best, result.exp_bits)
        assert any(m.startswith("Minifloat net written: ") for m in msgs)  # scored, too
        assert result.final is not None
    elif mode == "integer_power_of_2_weights":
        assert result.summary[2] == "Integer-power-of-two weights" and result.summary[-2].startswith("4bit: \t")
        for lp in written.layer:
            if lp.HasField("quantization_param"):
                q = lp.quantization_param
                assert (q.precision, q.exp_min, q.exp_max, q.bw_layer_in, q.bw_layer_out) == \
                    (qp.INTEGER_POWER_OF_2_WEIGHTS, -8, -1, 8, 8)
                il = result.lengths[lp.name]
                assert (q.fl_layer_in, q.fl_layer_out) == (8 - il.il_in, 8 - il.il_out)
        assert not written.HasField("state")
    else:
        assert result.summary[-2].startswith("Accuracy: ")
    assert result.summary[-1] == "Please fine-tune."


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["minifloat", "integer_power_of_2_weights"])
def test_other_modes_on_lenet(mode, mnist_lmdbs, tmp_path, monkeypatch):
    lay_out_mnist(tmp_path, mnist_lmdbs)
    monkeypatch.chdir(tmp_path)
    result, msgs, written = _mode_run(tmp_path, SHARED_DATA / LENET, SHARED_DATA / LENET_WEIGHTS, mode, 20,
                                      semantics="caffe-cpu")
    _check_mode(result, msgs, written, mode)
    assert result.baseline_score == pytest.approx(0.988, abs=1e-6)  # the first 20 batches


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    """An LMDB of the 20 labelled CIFAR-10 images (label = the last number in the file name) made by
    our convert_imageset, and cifar10_quick's train_test prototxt reading it for both phases.

    convert_imageset reads with OpenCV, so the Datums hold B, G, R planes (checked below); the
    missing mean file becomes the CIFAR-10 channel means in that order: mean_value 113.9 (B),
    123.0 (G), 125.3 (R). (Caffe's own CIFAR-10 LMDBs, from convert_cifar_data, hold R, G, B, and
    the trained weights expect that order; with 20 images the scores are coarse either way.)"""
    import lmdb
    import numpy as np

    from ristretto_cli.data.tools import convert_imageset
    folder = tmp_path_factory.mktemp("cifar")
    images = shared_data("images/foolbox_cifar10")
    names = sorted(p.name for p in images.iterdir() if p.suffix == ".png")
    assert len(names) == 20
    labels = [re.findall(r"\d+", n)[-1] for n in names]
    (folder / "list.txt").write_text("".join(f"{n} {label}\n" for n, label in zip(names, labels)))
    convert_imageset(str(images) + "/", str(folder / "list.txt"), str(folder / "cifar_lmdb"), backend="lmdb")
    env = lmdb.open(str(folder / "cifar_lmdb"), readonly=True, lock=False)
    means = np.zeros(3)
    with env.begin() as txn:
        for _, value in txn.cursor():
            d = caffe_pb2.Datum.FromString(value)
            means += np.frombuffer(d.data, np.uint8).reshape(3, -1).mean(axis=1) / 20
    env.close()
    assert means[0] < means[2]  # B first: these images are redder than blue on average (RGB 125/121/115)
    text = shared_data(CIFAR).read_text()
    text = re.sub(r'mean_file: "[^"]*"', "mean_value: 113.9\n    mean_value: 123.0\n    mean_value: 125.3", text)
    text = re.sub(r'source: "[^"]*"', 'source: "cifar_lmdb"', text).replace("batch_size: 100", "batch_size: 10")
    assert text.count("mean_value: 113.9") == 2 and text.count('source: "cifar_lmdb"') == 2
    (folder / "cifar10_quick.prototxt").write_text(text)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dynamic_fixed_point", "minifloat", "integer_power_of_2_weights"])
def test_all_modes_on_cifar10_quick(mode, cifar_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(cifar_folder)
    result, msgs, written = _mode_run(tmp_path, cifar_folder / "cifar10_quick.prototxt", shared_data(CIFAR_WEIGHTS),
                                      mode, 2)
    _check_mode(result, msgs, written, mode)
    assert [r.name for r in result.ranges] == ["conv1", "conv2", "conv3", "ip1", "ip2"]
    assert result.baseline_score == pytest.approx(0.6)  # 12 of the 20 images
    assert msgs.count("Running for 10 iterations.") == 1


# ---------------------------------------------------------------------- errors before any work
@pytest.fixture
def mnist_cwd(mnist_lmdbs, tmp_path, monkeypatch):
    lay_out_mnist(tmp_path, mnist_lmdbs)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _quantize_cli(capsys, *args, out="out.prototxt", model=LENET, weights=LENET_WEIGHTS,
                  mode="dynamic_fixed_point"):
    base = [f"--model={SHARED_DATA / model}" if model else None,
            f"--weights={SHARED_DATA / weights}" if weights else None,
            f"--model_quantized={out}" if out else None, f"--trimming_mode={mode}" if mode else None]
    return run_cli(capsys, "quantize", *[a for a in base if a], "--iterations=2", *args)


def _one_line_error(status, lines, pattern):
    assert status == 1
    assert len(lines) == 1, lines  # nothing else: no "Use CPU.", no net set-up, no "Running for"
    assert "Running for" not in lines[0]
    assert re.match(r"^ristretto: error: " + pattern, lines[0]), lines[0]


@pytest.mark.parametrize("missing, text", [
    ("model", "Need a model definition to score."), ("weights", "Need model weights to score."),
    ("out", "Need network description output path."), ("mode", "Need trimming mode.")])
def test_required_flags_in_ristrettos_order(missing, text, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, lines = _quantize_cli(capsys, **{missing: None})
    _one_line_error(status, lines, re.escape(text))


def test_unknown_trimming_mode_lists_the_valid_ones(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, lines = _quantize_cli(capsys, mode="fixed_point")
    _one_line_error(status, lines, re.escape("Unknown trimming mode: fixed_point (valid modes: "
                                             "dynamic_fixed_point, minifloat, integer_power_of_2_weights)"))
    assert not (tmp_path / "out.prototxt").exists()


def test_unwritable_output_path(capsys, mnist_cwd):
    status, lines = _quantize_cli(capsys, out="no/such/folder/q.prototxt")
    _one_line_error(status, lines, re.escape("no/such/folder/q.prototxt: cannot write: folder does not exist"))
    status, lines = _quantize_cli(capsys, "--report=missing/r.json")
    _one_line_error(status, lines, "missing/r.json: cannot write")
    assert not (mnist_cwd / "out.prototxt").exists() and not (mnist_cwd / "no").exists()


def test_deploy_net_has_nothing_to_score(capsys, mnist_cwd):
    status, lines = _quantize_cli(capsys, model="models/lenet/lenet.prototxt")
    _one_line_error(status, lines, r".*lenet\.prototxt: the TEST-phase net has nothing to score: quantize needs "
                                   r"data layers and a TEST-phase output such as an Accuracy layer's")
    assert not (mnist_cwd / "out.prototxt").exists()


def test_weights_that_do_not_match_the_net(capsys, mnist_cwd):
    status, lines = _quantize_cli(capsys, weights=CIFAR_WEIGHTS)
    _one_line_error(status, lines, r".*cifar10_quick_iter_4000\.caffemodel: layer 'conv1': cannot copy param 0 "
                                   r"weights: shape mismatch")
    assert not (mnist_cwd / "out.prototxt").exists()


def test_bad_score_output_lists_the_outputs_and_keeps_an_existing_file(capsys, mnist_cwd):
    (mnist_cwd / "out.prototxt").write_text("old contents\n")
    status, lines = _quantize_cli(capsys, "--score=top1")
    _one_line_error(status, lines, r".*: --score 'top1' is not an output of the TEST-phase net \(outputs: "
                                   r"accuracy, loss\)")
    assert (mnist_cwd / "out.prototxt").read_text() == "old contents\n"  # never deleted


def test_plot_without_matplotlib_is_a_clear_error(capsys, mnist_cwd, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    status, lines = _quantize_cli(capsys, "--plot=p.png")
    _one_line_error(status, lines, re.escape("--plot needs matplotlib, an optional extra: pip install "
                                             "'ristretto-cli[plot]'"))


def test_gpu_flag_warns_once_score_option_and_dash_spellings(capsys, mnist_cwd):
    text = shared_data(LENET).read_text().replace("batch_size: 100", "batch_size: 10") \
        .replace("batch_size: 64", "batch_size: 10")
    shutil.copy(shared_data(LENET_WEIGHTS), mnist_cwd / "w.caffemodel")
    (mnist_cwd / "small.prototxt").write_text(text)
    status, lines = run_cli(capsys, "quantize", "--model", "small.prototxt", "--weights", "w.caffemodel",
                            "--model-quantized", "q.prototxt", "--trimming-mode", "integer_power_of_2_weights",
                            "--iterations", "3", "--error-margin", "50", "--gpu=0", "--score", "loss")
    assert status == 0, lines[-3:]
    warnings = [x for x in lines if x.startswith("W")]
    assert len(warnings) == 1 and "no GPU backend is available" in warnings[0]
    msgs = [message(x) for x in lines]
    assert "Use CPU." not in msgs
    # the score is the mean loss now: the summary prints it
    baseline = float(next(m for m in msgs if m.startswith("Baseline 32bit float: ")).split(": ")[1])
    first_loss = next(m for m in msgs if m.startswith("Loss: "))
    assert baseline == pytest.approx(float(first_loss.split(": ")[1]), rel=1e-6)
    assert (mnist_cwd / "q.prototxt").exists()
