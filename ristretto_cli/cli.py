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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="ristretto")
def cli():
    """Caffe-compatible CLI with Ristretto's CNN approximation (dynamic fixed point,
    minifloat, power-of-two weights), on NumPy: no Caffe install, no GPU.

    Add --debug anywhere to see a traceback instead of the one-line error.
    """


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
        cli.main(args=args, prog_name="ristretto", standalone_mode=False)
    except RistrettoError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"ristretto: error: {exc}", err=True)
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
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
