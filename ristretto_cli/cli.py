"""The ``ristretto`` command: thin click wrappers around the engine; no maths here.

Caffe's flag spellings are accepted: ``--model=x``, ``--model x`` and gflags' single-dash
``-model=x``; underscore names (``--model_quantized``) and their dash aliases
(``--model-quantized``) alike. ``--debug`` anywhere on the line shows tracebacks.
"""

from __future__ import annotations

import sys
import traceback

import click

from ristretto_cli import __version__
from ristretto_cli.errors import RistrettoError


def _option(name: str, *more, **kwargs):
    """A click option spelled ``--under_score`` with a ``--dash-ed`` alias."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return click.option(*names, *more, name, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             invoke_without_command=True)
@click.version_option(__version__, "--version", prog_name="ristretto")
@click.pass_context
def cli(ctx):
    """Caffe-compatible CLI with Ristretto's CNN approximation (dynamic fixed point,
    minifloat, power-of-two weights), on NumPy: no Caffe install, no GPU.

    Add --debug anywhere to see a traceback instead of the one-line error.
    """
    if ctx.invoked_subcommand is None:  # as caffe without a command: usage on stdout, status 0
        click.echo(ctx.get_help())


@cli.command("upgrade_net_proto_text")
@click.argument("source", metavar="IN")
@click.argument("target", metavar="OUT")
def upgrade_net_proto_text(source, target):
    """Upgrade a net prototxt in any legacy form (V0, V1, input fields) to the current text
    format. Exit status 1 if part of it could not be carried over."""
    from ristretto_cli.io.upgrade_files import upgrade_net_file
    if not upgrade_net_file(source, target, binary=False):
        raise click.exceptions.Exit(1)


@cli.command("upgrade_net_proto_binary")
@click.argument("source", metavar="IN")
@click.argument("target", metavar="OUT")
def upgrade_net_proto_binary(source, target):
    """Upgrade a binary net or caffemodel (or HDF5 weights) to the current binary format.
    Exit status 1 if part of it could not be carried over."""
    from ristretto_cli.io.upgrade_files import upgrade_net_file
    if not upgrade_net_file(source, target, binary=True):
        raise click.exceptions.Exit(1)


@cli.command("train")
@_option("solver", default="", metavar="FILE", help="solver prototxt (required)")
@_option("weights", default="", metavar="A[,B..]",
         help="caffemodel(s) to fine-tune from, comma-separated; later files win")
@_option("snapshot", default="", metavar="FILE",
         help="resume from a .solverstate / .solverstate.h5 (not with --weights)")
@_option("sigint_effect", default="stop", metavar="EFFECT",
         help="on SIGINT (Ctrl-C): stop (then the final snapshot), snapshot or none")
@_option("sighup_effect", default="snapshot", metavar="EFFECT",
         help="on SIGHUP: snapshot, stop or none")
@_option("gpu", default="", metavar="IDS", help="accepted for compatibility; runs on the CPU")
@_option("level", default=0, type=int, help="NetState level of the train net")
@_option("stage", default="", metavar="S[,T..]", help="NetState stages of the train net")
@_option("semantics", default="ristretto", type=click.Choice(["ristretto", "caffe-cpu"]),
         help="Ristretto number-format rules")
@_option("log", default=None, metavar="FILE", help="also write the log to FILE")
def train(solver, weights, snapshot, sigint_effect, sighup_effect, gpu, level, stage, semantics,
          log):
    """Train or fine-tune a net, as `caffe train` (snapshots resume bit for bit)."""
    from ristretto_cli import log as logging_setup
    from ristretto_cli.io import check_writable
    from ristretto_cli.solver import train as run_train
    if log:
        check_writable(log)
        logging_setup.configure(log_file=log)
    run_train(solver, weights=weights, snapshot=snapshot, sigint_effect=sigint_effect,
              sighup_effect=sighup_effect, gpu=gpu, level=level, stage=stage, semantics=semantics)


class _GflagsCommand(click.Command):
    """A command whose boolean flags also accept gflags' ``--flag=true|false`` spelling."""

    def parse_args(self, ctx, args):
        flags = {o for p in self.params if isinstance(p, click.Option) and p.is_flag for o in p.opts}
        out = []
        for arg in args:
            name, eq, value = arg.partition("=")
            if eq and name in flags:
                if value.lower() in ("true", "t", "yes", "y", "1"):
                    out.append(name)
                elif value.lower() not in ("false", "f", "no", "n", "0"):
                    raise click.BadParameter(f"'{value}' is not a boolean", param_hint=name)
                continue
            out.append(arg)
        return super().parse_args(ctx, out)


@cli.command("test")
@_option("model", default="", metavar="FILE", help="net prototxt to score (required)")
@_option("weights", default="", metavar="FILE", help="ONE caffemodel (or .caffemodel.h5) (required)")
@_option("iterations", default=50, type=int, show_default=True, help="number of forward batches")
@_option("phase", default="TEST", type=click.Choice(["TEST", "TRAIN"], case_sensitive=False),
         show_default=True, help="phase the net is built for")
@_option("level", default=0, type=int, help="NetState level")
@_option("stage", default="", metavar="S[,T..]", help="NetState stages, comma-separated")
@_option("gpu", default="", metavar="IDS", help="accepted for compatibility; runs on the CPU")
@_option("semantics", default="ristretto", type=click.Choice(["ristretto", "caffe-cpu"]),
         help="Ristretto number-format rules")
@_option("log", default=None, metavar="FILE", help="also write the log to FILE")
def test_command(model, weights, iterations, phase, level, stage, gpu, semantics, log):
    """Score a model, as `caffe test`: per-batch outputs, then the mean loss and outputs."""
    from ristretto_cli import log as logging_setup
    from ristretto_cli.io import check_writable
    from ristretto_cli.scoring import test_model
    if log:
        check_writable(log)
        logging_setup.configure(log_file=log)
    test_model(model, weights, iterations=iterations, phase=phase, level=level, stage=stage, gpu=gpu,
               semantics=semantics)


@cli.command("time")
@_option("model", default="", metavar="FILE", help="net prototxt to time (required)")
@_option("iterations", default=50, type=int, show_default=True, help="number of timed passes")
@_option("phase", default="TRAIN", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
         show_default=True, help="phase the net is built for")
@_option("weights", default="", metavar="FILE", help="optional caffemodel to load first")
@_option("level", default=0, type=int, help="NetState level")
@_option("stage", default="", metavar="S[,T..]", help="NetState stages, comma-separated")
@_option("gpu", default="", metavar="IDS", help="accepted for compatibility; runs on the CPU")
@_option("semantics", default="ristretto", type=click.Choice(["ristretto", "caffe-cpu"]),
         help="Ristretto number-format rules")
def time_command(model, iterations, phase, weights, level, stage, gpu, semantics):
    """Benchmark a model's execution time, as `caffe time`: per-layer forward/backward ms."""
    from ristretto_cli.timing import time_model
    time_model(model, iterations=iterations, phase=phase, weights=weights, level=level, stage=stage,
               gpu=gpu, semantics=semantics)


@cli.command("device_query")
@_option("gpu", default="", metavar="IDS", help="GPU ids or 'all' to query (there is no GPU: one warning)")
def device_query_command(gpu):
    """Show GPU diagnostic information, as `caffe device_query`: there is no GPU backend."""
    from ristretto_cli.log import logger
    logger.info("Querying GPUs %s", gpu)  # Caffe's line, trailing space included without --gpu
    if gpu:
        logger.warning("no GPU backend is available: no device to query (--gpu=%s)", gpu)


@cli.command("quantize")
@_option("model", default="", metavar="FILE", help="float net with data layers and a TEST output (required)")
@_option("weights", default="", metavar="FILE", help="trained float weights (required)")
@_option("model_quantized", default="", metavar="FILE", help="where to write the quantized net (required)")
@_option("trimming_mode", default="", metavar="MODE",
         help="dynamic_fixed_point, minifloat or integer_power_of_2_weights (required)")
@_option("iterations", default=50, type=int, show_default=True, help="TEST batches per scoring run")
@_option("error_margin", default=2.0, type=float, show_default=True,
         help="allowed score drop, in percentage points")
@_option("gpu", default="", metavar="IDS", help="accepted for compatibility; runs on the CPU")
@_option("semantics", default="ristretto", type=click.Choice(["ristretto", "caffe-cpu"]),
         help="Ristretto number-format rules")
@_option("score", default=None, metavar="OUTPUT", help="net output whose first element is the score "
         "(default: the first output by name, as Ristretto)")
@_option("report", default=None, metavar="FILE", help="also write a JSON report of every measurement")
@_option("plot", default=None, metavar="FILE",
         help="also plot score against bit width (PNG; needs matplotlib)")
@_option("workers", default=0, type=int, help="scoring threads (0: one per core, at most 8)")
@_option("seed", default=None, type=int, help="seed of every random draw (dropout, random transforms)")
@_option("log", default=None, metavar="FILE", help="also write the log to FILE")
def quantize_command(model, weights, model_quantized, trimming_mode, iterations, error_margin, gpu, semantics,
                     score, report, plot, workers, seed, log):
    """Find bit widths for a trained net, as Ristretto's `ristretto quantize`, and write the
    quantized net description."""
    from ristretto_cli import log as logging_setup
    from ristretto_cli.io import check_writable
    from ristretto_cli.quantization.search import QuantizeOptions, quantize
    if log:
        check_writable(log)
        logging_setup.configure(log_file=log)
    quantize(QuantizeOptions(model=model, weights=weights, model_quantized=model_quantized,
                             trimming_mode=trimming_mode, iterations=iterations, error_margin=error_margin,
                             gpu=gpu, semantics=semantics, score=score, report=report, plot=plot,
                             workers=workers, seed=seed))


@cli.command("plot_training_log", context_settings={"ignore_unknown_options": False})
@click.argument("chart_type", type=int)
@click.argument("out_png", metavar="OUT.png")
@click.argument("logs", nargs=-1, required=True, metavar="LOG...")
def plot_training_log_command(chart_type, out_png, logs):
    """Plot a training log as Caffe's plot_training_log.py does (needs matplotlib).

    CHART_TYPE: 0 test accuracy / 1 test accuracy vs seconds / 2 test loss / 3 test loss vs
    seconds / 4 learning rate / 5 learning rate vs seconds / 6 train loss / 7 train loss vs
    seconds (iterations on the x axis unless it says seconds).
    """
    from ristretto_cli.training_plot import plot_training_log
    summary = plot_training_log(chart_type, out_png, list(logs))
    from ristretto_cli.log import logger
    logger.info("Wrote %s (%s)", out_png, ", ".join(f"{s['points']} points" for s in summary["series"]))


@cli.command("parse_log")
@click.argument("logfile_path", metavar="LOGFILE")
@click.argument("output_dir", metavar="OUTPUT_DIR")
@click.option("--verbose", is_flag=True, help="print the name of each file written or skipped")
@click.option("--delimiter", default=",", show_default=True, metavar="CHAR",
              help="column delimiter of the CSV files")
def parse_log_command(logfile_path, output_dir, verbose, delimiter):
    """Write a training log's train and test rows to OUTPUT_DIR/LOGFILE.train and .test (CSV),
    as Caffe's tools/extra/parse_log.py. A table without rows is not written."""
    from ristretto_cli.log_extracts import parse_log
    messages = parse_log(logfile_path, output_dir, delimiter)
    if verbose:
        for message in messages:
            click.echo(message)


@cli.command("extract_seconds")
@click.argument("input_log", metavar="INPUT_LOG")
@click.argument("output_file", metavar="OUTPUT_FILE")
def extract_seconds_command(input_log, output_file):
    """Write the seconds since the 'Solving' line of every log line that mentions 'Iteration',
    one per line, as Caffe's tools/extra/extract_seconds.py."""
    from ristretto_cli.log_extracts import extract_seconds
    extract_seconds(input_log, output_file)


@cli.command("summarize")
@click.argument("filename", metavar="NET_PROTOTXT")
@click.option("-w", "--max-width", default=30, type=int, show_default=True, help="maximum column width")
@click.option("--color/--no-color", default=None,
              help="colour blob names with ANSI codes (default: when stdout is a terminal)")
def summarize_command(filename, max_width, color):
    """Print a net's layers as a table, as Caffe's tools/extra/summarize.py: name, type,
    (lr/decay multipliers), bottoms -> tops, kernel/stride+pad num_output/group."""
    from ristretto_cli.net_summary import summarize
    if color is None:
        color = sys.stdout.isatty()
    for line in summarize(filename, max_width=max_width, color=color):
        click.echo(line, color=color)


@cli.command("resize_and_crop_images")
@_option("input", default="", metavar="LISTFILE",
         help="list of images, one per line: a path relative to --input_folder first (required)")
@_option("input_folder", default="", metavar="DIR", help="folder the listed paths are relative to")
@_option("output_folder", default="", metavar="DIR", help="folder the images are written to, at the same "
         "relative paths")
@_option("output_side_length", default=256, type=int, show_default=True, help="side of the output squares")
@_option("image_lib", default="opencv", metavar="LIB", show_default=True,
         help="opencv, or pil (needs Pillow: always JPEG, never enlarges)")
def resize_and_crop_images_command(input, input_folder, output_folder, output_side_length, image_lib):
    """Scale every listed image so its short side is --output_side_length and keep the centre
    square, as Caffe's tools/extra/resize_and_crop_images.py. An image that cannot be read or
    written is skipped with a warning."""
    from ristretto_cli.data.resize_crop import resize_and_crop_images
    resize_and_crop_images(input, input_folder, output_folder, output_side_length, image_lib)


@cli.command("convert_mnist_data", cls=_GflagsCommand)
@click.argument("image_file")
@click.argument("label_file")
@click.argument("db_path", metavar="OUTPUT_DB")
@_option("backend", default="lmdb", type=click.Choice(["lmdb", "leveldb"], case_sensitive=False),
         show_default=True, help="the DB kind to write")
def convert_mnist_data_command(image_file, label_file, db_path, backend):
    """Convert MNIST IDX files (raw or .gz) to an LMDB/LevelDB of Datums, as Caffe's tool."""
    from ristretto_cli.data.tools import convert_mnist_data
    convert_mnist_data(image_file, label_file, db_path, backend)


@cli.command("convert_imageset", cls=_GflagsCommand)
@click.argument("root_folder", metavar="ROOTFOLDER/")
@click.argument("list_file", metavar="LISTFILE")
@click.argument("db_path", metavar="DB_NAME")
@_option("gray", is_flag=True, help="treat images as grayscale ones")
@_option("shuffle", is_flag=True, help="randomly shuffle the order of images and their labels")
@_option("seed", default=None, type=int, help="seed of --shuffle (default: random, logged)")
@_option("backend", default="lmdb", type=click.Choice(["lmdb", "leveldb"], case_sensitive=False),
         show_default=True, help="the DB kind to write")
@_option("resize_width", default=0, type=int, help="width images are resized to")
@_option("resize_height", default=0, type=int, help="height images are resized to")
@_option("check_size", is_flag=True, help="check that all images have the same size")
@_option("encoded", is_flag=True, help="store the encoded image in the Datum")
@_option("encode_type", default="", metavar="EXT",
         help="what to encode the image as ('png', 'jpg', ...); implies --encoded")
def convert_imageset_command(root_folder, list_file, db_path, gray, shuffle, seed, backend, resize_width,
                             resize_height, check_size, encoded, encode_type):
    """Convert a set of images (list file of "path label" lines) to an LMDB/LevelDB of Datums."""
    from ristretto_cli.data.tools import convert_imageset
    convert_imageset(root_folder, list_file, db_path, gray=gray, shuffle=shuffle, seed=seed, backend=backend,
                     resize_width=resize_width, resize_height=resize_height, check_size=check_size,
                     encoded=encoded, encode_type=encode_type)


@cli.command("compute_image_mean", cls=_GflagsCommand)
@click.argument("db_path", metavar="INPUT_DB")
@click.argument("output", metavar="[OUTPUT_FILE]", required=False)
@_option("backend", default="lmdb", type=click.Choice(["lmdb", "leveldb"], case_sensitive=False),
         show_default=True, help="the DB kind to read")
def compute_image_mean_command(db_path, output, backend):
    """Compute the mean image of a DB of Datums and write it as a .binaryproto."""
    from ristretto_cli.data.tools import compute_image_mean
    compute_image_mean(db_path, output, backend)


@cli.command("convert_cifar_data")
@click.argument("input_folder")
@click.argument("output_folder")
@click.argument("db_type", metavar="DB_TYPE")
def convert_cifar_data_command(input_folder, output_folder, db_type):
    """Convert the CIFAR-10 binary batches (data_batch_1..5.bin, test_batch.bin) to
    OUTPUT_FOLDER/cifar10_train_DB_TYPE and cifar10_test_DB_TYPE (DB_TYPE: lmdb or leveldb)."""
    from ristretto_cli.data.cifar import convert_cifar_data
    convert_cifar_data(input_folder, output_folder, db_type)


@cli.command("convert_mnist_siamese_data", cls=_GflagsCommand)
@click.argument("image_file")
@click.argument("label_file")
@click.argument("db_path", metavar="OUTPUT_DB")
@_option("backend", default="leveldb", type=click.Choice(["leveldb", "lmdb"], case_sensitive=False),
         show_default=True, help="the DB kind to write")
@_option("seed", default=1701, type=int, show_default=True, help="seed of the random pairs")
def convert_mnist_siamese_data_command(image_file, label_file, db_path, backend, seed):
    """Convert MNIST IDX files to a DB of random image pairs (2-channel Datums, label 1 when
    both images are of the same digit), as Caffe's siamese example tool."""
    from ristretto_cli.data.siamese import convert_mnist_siamese_data
    convert_mnist_siamese_data(image_file, label_file, db_path, backend, seed=seed)


@cli.command("extract_features", context_settings={"ignore_unknown_options": True})
@click.argument("weights", metavar="PRETRAINED_WEIGHTS")
@click.argument("model", metavar="NET_PROTOTXT")
@click.argument("blob_names", metavar="BLOB_NAMES")
@click.argument("db_names", metavar="DB_NAMES")
@click.argument("num_mini_batches", metavar="NUM_MINI_BATCHES")
@click.argument("db_type", metavar="DB_TYPE")
@click.argument("mode", metavar="[CPU|GPU]", required=False, default="CPU")
@click.argument("device_id", metavar="[DEVICE_ID]", required=False)
def extract_features_command(weights, model, blob_names, db_names, num_mini_batches, db_type, mode,
                             device_id):
    """Store blob values of NUM_MINI_BATCHES TEST-phase forward passes as Datums, one DB per
    blob (BLOB_NAMES and DB_NAMES: comma-separated, equal length). GPU runs on the CPU."""
    from ristretto_cli.data.features import extract_features
    extract_features(weights, model, blob_names, db_names, num_mini_batches, db_type, mode, device_id)


@cli.command("upgrade_solver_proto_text")
@click.argument("source", metavar="IN")
@click.argument("target", metavar="OUT")
def upgrade_solver_proto_text(source, target):
    """Upgrade a solver prototxt's legacy solver_type enum to the type string."""
    from ristretto_cli.io.upgrade_files import upgrade_solver_file
    upgrade_solver_file(source, target)


@cli.command("draw_net", cls=_GflagsCommand)
@click.argument("input_net_proto_file")
@click.argument("output_image_file")
@_option("rankdir", default="LR", show_default=True,
         help="Graphviz's rank direction: LR, TB, BT or RL")
@_option("phase", default="ALL", show_default=True, type=click.Choice(["TRAIN", "TEST", "ALL"]),
         help="draw only the layers of this phase")
@_option("display_lrm", is_flag=True, help="show the learning-rate multipliers")
def draw_net_command(input_net_proto_file, output_image_file, rankdir, phase, display_lrm):
    """Draw a net as a graph, as Caffe's python/draw_net.py (needs pydot; an image needs
    Graphviz's dot program, a .dot or .gv file does not)."""
    from ristretto_cli.pycaffe_draw import draw_net_file
    click.echo(f"Drawing net to {output_image_file}")
    draw_net_file(input_net_proto_file, output_image_file, rankdir=rankdir, phase=phase,
                  display_lrm=display_lrm)


def _normalise_argv(argv: list[str]) -> tuple[list[str], bool]:
    """Strip ``--debug``; turn gflags' ``-name[=value]`` into ``--name[=value]``."""
    debug = False
    out = []
    for arg in argv:
        if arg == "--debug" or arg == "-debug":
            debug = True
            continue
        if (len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and arg[1].isalpha()
                and ("=" in arg or len(arg.split("=")[0]) > 2)):
            arg = "-" + arg
        out.append(arg)
    return out, debug


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args, debug = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    from ristretto_cli import log
    log.configure()
    try:
        status = cli.main(args=args, prog_name="ristretto", standalone_mode=False)
    except (RistrettoError, MemoryError) as exc:
        if debug:
            traceback.print_exc()
        # A MemoryError outside a layer (those name themselves: OutOfMemoryError)
        what = exc if isinstance(exc, RistrettoError) else f"out of memory: {exc}"
        click.echo(f"ristretto: error: {what}", err=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("ristretto: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("ristretto: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 141
    # A command that ends with ctx.exit(n) / click.exceptions.Exit(n) reports n.
    return status if isinstance(status, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
