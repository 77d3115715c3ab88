"""Caffe's ``tools/extra/summarize.py``: a net as a table, one line per layer.

Columns: name, type, parameter multipliers, bottoms, ``->``, tops, and a short form of the
convolution or pooling geometry (``kernel/stride+pad num_output/group``). Each blob name is
coloured with ANSI codes, one colour per blob; a bottom no earlier layer produces is on red,
and a top no later layer consumes is bold and underlined.
"""

from __future__ import annotations

import re

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.prototxt import read_net_param
from ristretto_cli.io.upgrade import upgrade_net

BLOB_COLORS = ("92", "93", "94", "95", "97", "96", "42", "43;30", "100", "444", "103;30", "107;30")
UNPRODUCED_COLOR = "41"
UNCONSUMED_STYLE = "\033[1;4m"
_ANSI_CODE = re.compile(r"\033\[[\d;]+m")
DEFAULT_MAX_WIDTH = 30


def python2_str(value: float) -> str:
    """A float field as Caffe's script prints it (Python 2 ``str``: 12 significant digits,
    ``.0`` after a whole number), taken from the float32 digits as written: 0.3 reads ``0.3``
    (Caffe's C++ protobuf backend would widen it to 0.300000011921), 2 reads ``2.0``."""
    text = format(float(str(np.float32(value))), ".12g")
    return text + ".0" if text.lstrip("-").isdigit() else text


def printed_width(text: str) -> int:
    """Length of ``text`` on screen: without its ANSI codes."""
    return len(_ANSI_CODE.sub("", text))


def _multipliers(spec) -> str:
    parts = [spec.name] if spec.name else []
    if spec.lr_mult != 1:
        parts.append("x" + python2_str(spec.lr_mult))
    if spec.decay_mult != 1:
        parts.append("Dx" + python2_str(spec.decay_mult))
    return " ".join(parts)


def _geometry(layer) -> str:
    conv = layer.convolution_param
    # like Caffe's script, only a single square kernel is summarised
    if layer.type in ("Convolution", "Deconvolution") and len(conv.kernel_size) == 1:
        text = str(conv.kernel_size[0])
        if conv.stride and conv.stride[0] != 1:
            text += f"/{conv.stride[0]}"
        if conv.pad and conv.pad[0] != 0:
            text += f"+{conv.pad[0]}"
        text += f" {conv.num_output}"
        if conv.group != 1:
            text += f"/{conv.group}"
        return text
    if layer.type == "Pooling":
        pool = layer.pooling_param
        text = str(pool.kernel_size)
        if pool.stride != 1:
            text += f"/{pool.stride}"
        if pool.pad != 0:
            text += f"+{pool.pad}"
        return text
    return ""


def summary_rows(net) -> list[list[str]]:
    """One row of seven cells per layer of ``net`` (a NetParameter), blob names coloured."""
    unconsumed: set[str] = set()
    for layer in net.layer:
        unconsumed |= set(layer.top)
        unconsumed -= set(layer.bottom)
    colors: dict[str, str] = {}
    rows = []
    for layer in net.layer:
        tops = []
        for index, top in enumerate(layer.top):
            color = colors.setdefault(top, BLOB_COLORS[len(colors) % len(BLOB_COLORS)])
            text = UNCONSUMED_STYLE + top if top in unconsumed else top
            if layer.loss_weight:
                text = f"{python2_str(layer.loss_weight[index])} * {text}"
            tops.append(f"\033[{color}m{text}\033[0m")
        bottoms = [f"\033[{colors.get(bottom, UNPRODUCED_COLOR)}m{bottom}\033[0m"
                   for bottom in layer.bottom]
        if layer.type == "Python":
            type_text = f"{layer.python_param.module}.{layer.python_param.layer}"
        else:
            type_text = layer.type
        multipliers = [_multipliers(spec) for spec in layer.param]
        param_text = f"({', '.join(multipliers)})" if any(multipliers) else ""
        rows.append([layer.name, type_text, param_text, ", ".join(bottoms), "->", ", ".join(tops),
                     _geometry(layer)])
    return rows


def format_table(rows: list[list[str]], max_width: int = DEFAULT_MAX_WIDTH) -> list[str]:
    """Lines of a left-aligned table: each column as wide as its widest cell plus a space, at
    most ``max_width``; a longer cell pushes the rest of its line right only as far as needed."""
    if not rows:
        return []
    widths = [min(max(printed_width(row[j]) + 1 for row in rows), max_width)
              for j in range(len(rows[0]))]
    lines = []
    for row in rows:
        line = ""
        right_edge = 0
        for cell, width in zip(row, widths):
            right_edge += width
            line += cell + " "
            line += " " * max(right_edge - printed_width(line), 0)
        lines.append(line)
    return lines


def summarize(path: str, max_width: int = DEFAULT_MAX_WIDTH, color: bool = True) -> list[str]:
    """The summary lines of the net definition at ``path``.

    A current net is read as it is, as Caffe's script reads it (deprecated ``input`` fields
    make no row); a V0/V1 net, which that script cannot list, is upgraded first.
    """
    net = read_net_param(path, upgrade=False)
    if not net.layer and net.layers:
        upgrade_net(net, path)
    for layer in net.layer:
        if layer.loss_weight and len(layer.loss_weight) < len(layer.top):
            raise RistrettoError(f"{len(layer.loss_weight)} loss_weight values for "
                                 f"{len(layer.top)} tops", path=path, layer=layer.name)
    lines = format_table(summary_rows(net), max_width)
    return lines if color else [_ANSI_CODE.sub("", line) for line in lines]
