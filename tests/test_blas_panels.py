"""Products in panels (``blas_panels``): the depth blocks the BLAS sums, the panels' bits
against the plain product's, the check that guards them, and the convolution keeping the plain
product's bits whether or not this BLAS agrees; the weight gradients' depth panels; and the
fully connected layers' row panels."""

from __future__ import annotations

import numpy as np
import pytest
from layer_check import setup

from ristretto_cli import parallel
from ristretto_cli.layers import blas_panels, convolution, inner_product


@pytest.fixture
def fresh_checks(monkeypatch):
    """A private memory of checked shapes, so that a changed rule is checked again."""
    monkeypatch.setattr(blas_panels, "_agreed", {})


def _on_openblas_avx512() -> bool:
    """Whether NumPy's own BLAS is OpenBLAS on its AVX-512 (SkylakeX) kernels, where the
    panel rules were measured (OpenCV, once imported, brings another OpenBLAS into the
    process)."""
    from threadpoolctl import threadpool_info
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas" and "numpy" in i.get("filepath", "")]
    return bool(blas) and blas[0].get("internal_api") == "openblas" and blas[0].get("architecture") == "SkylakeX"


def _plan(rows, depth, columns):
    """The panel width, count and last product's columns as the convolution picks them."""
    width = convolution.PANEL_MADDS // (rows * blas_panels.deepest_block(depth)) // 16 * 16
    tail = convolution.PANEL_MADDS // (rows * depth) + 1
    return convolution._panel_cover(rows, depth, columns, width, convolution.PANEL_MIN_COLUMNS) + (tail,)


def test_blocks_follow_the_blas_rule():
    # Whole blocks of 448 while twice that remains, then the rest halved, the first half
    # rounded up to a multiple of 16 (worked by hand).
    assert blas_panels.depth_blocks(75) == [(0, 75)]
    assert blas_panels.depth_blocks(448) == [(0, 448)]
    assert blas_panels.depth_blocks(500) == [(0, 256), (256, 500)]     # 250 -> 256
    assert blas_panels.depth_blocks(800) == [(0, 400), (400, 800)]
    assert blas_panels.depth_blocks(896) == [(0, 448), (448, 896)]
    assert blas_panels.depth_blocks(1152) == [(0, 448), (448, 800), (800, 1152)]   # 704 -> 352
    assert blas_panels.depth_blocks(2304) == [(0, 448), (448, 896), (896, 1344), (1344, 1792),
                                               (1792, 2048), (2048, 2304)]
    assert [blas_panels.deepest_block(d) for d in (75, 500, 800, 1152)] == [75, 256, 400, 448]


# deep (two or three depth blocks) and shallow shapes of the nets: CIFAR-10's and LeNet's second
# layers, SqueezeNet's first layer, a 3x3 expand layer, 1x1 squeeze and expand layers
SHAPES = [(32, 800), (50, 500), (16, 1152), (96, 147), (64, 144), (16, 96), (64, 16), (192, 48)]


@pytest.mark.parametrize("rows, depth", SHAPES)
def test_panels_equal_the_plain_product_where_they_agree(rows, depth, fresh_checks):
    rng = np.random.default_rng(rows + depth)
    a = rng.standard_normal((rows, depth)).astype(np.float32)
    b = rng.standard_normal((2, depth, 3025)).astype(np.float32)      # stacked, as 1x1 layers go
    width, count, tail = _plan(rows, depth, 3025)
    assert width >= convolution.PANEL_MIN_COLUMNS and count >= 1
    panels = np.empty((2, rows, 3025), np.float32)
    with parallel.blas_single_threaded():      # as layers run the BLAS
        blas_panels.panel_product(a, b, panels, width, count)
        plain = np.matmul(a, b)
    # Always the same product up to rounding; bit for bit wherever the check says so
    # (on OpenBLAS's AVX-512 build, where these shapes were measured, it does).
    np.testing.assert_allclose(panels, plain, rtol=1e-4, atol=1e-4)
    if blas_panels.agrees(rows, depth, width, tail):
        np.testing.assert_array_equal(panels.view(np.uint32), plain.view(np.uint32))


def test_whole_multiples_of_16_columns_go_entirely_in_panels():
    """Worked by hand: the widest multiple of 16 (not below the least) that divides the
    columns; other counts of columns keep a last product of more than PANEL_MADDS."""
    cover = convolution._panel_cover
    assert cover(32, 800, 1280, 64, 64) == (64, 20)          # CIFAR-10's conv2, 5 items
    assert cover(32, 75, 13312, 416, 64) == (416, 32)        # its conv1, 13 items of 1024
    assert cover(32, 160, 1280, 192, 32) == (160, 8)         # 192 does not divide 1280
    # 1283 is no multiple of 16; 1104 = 16 * 69 is, but 64 does not divide it
    last = convolution.PANEL_MADDS // (32 * 800) + 1                      # 40 columns
    assert cover(32, 800, 1283, 64, 64) == (64, (1283 - last) // 64)
    assert cover(32, 800, 1104, 64, 64) == (64, (1104 - last) // 64)


@pytest.mark.parametrize("rows, depth, columns", [(32, 800, 1280), (32, 75, 13312), (96, 147, 1024),
                                                  (64, 144, 512)])
def test_panels_without_a_last_product_equal_the_plain_product(rows, depth, columns, fresh_checks):
    rng = np.random.default_rng(rows * depth)
    a = rng.standard_normal((rows, depth)).astype(np.float32)
    b = rng.standard_normal((depth, columns)).astype(np.float32)
    width, count, tail = _plan(rows, depth, columns)
    assert width * count == columns
    panels = np.empty((rows, columns), np.float32)
    with parallel.blas_single_threaded():
        blas_panels.panel_product(a, b, panels, width, count)
        plain = np.matmul(a, b)
    np.testing.assert_allclose(panels, plain, rtol=1e-4, atol=1e-4)
    if blas_panels.agrees(rows, depth, width, tail):
        np.testing.assert_array_equal(panels.view(np.uint32), plain.view(np.uint32))


def test_a_wrong_block_rule_is_caught_by_the_check(monkeypatch, fresh_checks):
    """With blocks of 300 the sums run in another order than the BLAS's (800 = 400 + 400
    there): the check on random operands sees it."""
    monkeypatch.setattr(blas_panels, "BLOCK_DEPTH", 300)
    assert blas_panels.depth_blocks(800) == [(0, 300), (300, 556), (556, 800)]
    assert not blas_panels.agrees(32, 800, 64, 40)


@pytest.mark.parametrize("block_depth", [448, 300])     # the build's rule; a wrong one
def test_convolution_forward_keeps_the_plain_products_bits(block_depth, monkeypatch, fresh_checks):
    """CIFAR-10's second layer (32 x 800 weights): the forward in panels where the BLAS
    agrees, the plain product where it does not (a wrong rule), the same top either way as
    with the panels turned off."""
    monkeypatch.setattr(blas_panels, "BLOCK_DEPTH", block_depth)
    width, _, tail = _plan(32, 800, 1280)
    agreed = blas_panels.agrees(32, 800, width, tail)    # checked (and remembered) before the spy
    used = []
    real = blas_panels.panel_product
    monkeypatch.setattr(blas_panels, "panel_product", lambda *a: used.append(a[3:]) or real(*a))
    rng = np.random.default_rng(11)
    x = rng.standard_normal((10, 32, 16, 16)).astype(np.float32)
    spec = ('type: "Convolution" convolution_param { num_output: 32 kernel_size: 5 pad: 2 '
            'weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "constant" value: 0.1 } }')
    tops = []
    with parallel.limited(1):
        for min_columns in (convolution.PANEL_MIN_COLUMNS, 1 << 30):
            monkeypatch.setattr(convolution, "PANEL_MIN_COLUMNS", min_columns)
            layer, bottoms, top = setup(spec, [x])
            layer.forward(bottoms, top)
            tops.append(top[0].data.copy())
    np.testing.assert_array_equal(tops[0].view(np.uint32), tops[1].view(np.uint32))
    assert bool(used) == agreed
    assert not (block_depth == 300 and agreed)


def test_openblas_avx512_takes_the_panels(fresh_checks):
    """On the BLAS the rules were measured on, the check agrees for the shapes they are meant
    for (else the layers would quietly fall back to the slower plain product)."""
    if not _on_openblas_avx512():
        pytest.skip("the panel rules were measured on OpenBLAS's AVX-512 (SkylakeX) kernels")
    for rows, depth in SHAPES:
        width, _, tail = _plan(rows, depth, 3025)
        assert blas_panels.agrees(rows, depth, width, tail), (rows, depth)


def test_long_reductions_go_in_depth_panels_summed_in_order():
    """A weight gradient's long reduction (CIFAR-10's 5 kernel rows x 160 x 1280 by 1280 x 32)
    in depth panels: each panel's product, summed in panel order, bit for bit; the plain
    product up to rounding. A depth that no panel width divides keeps the plain product."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 160, 1283)).astype(np.float32)
    b = rng.standard_normal((1283, 32)).astype(np.float32)
    # Widths: multiples of 16 within 1e6 / (160 * 32) = 195 that divide 1280: 192 and 176
    # do not, 160 does (8 panels).
    width = 160
    with parallel.blas_single_threaded():
        got = convolution._depth_panel_product(a[..., :1280], b[:1280])
        expected = None
        for k0 in range(0, 1280, width):
            part = np.matmul(a[..., k0:k0 + width], b[k0:k0 + width])
            expected = part if expected is None else expected + part
        plain = np.matmul(a[..., :1280], b[:1280])
        odd = convolution._depth_panel_product(a, b)        # 1283 = a prime: no panels
        odd_plain = np.matmul(a, b)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    np.testing.assert_allclose(got, plain, rtol=1e-4, atol=1e-3)
    assert not np.array_equal(got, plain)       # another order of summation indeed
    np.testing.assert_array_equal(odd.view(np.uint32), odd_plain.view(np.uint32))


@pytest.fixture
def fresh_swaps(monkeypatch):
    """Private memories of the swapped products' checks and timings."""
    monkeypatch.setattr(blas_panels, "_swap_agreed", {})
    monkeypatch.setattr(convolution, "_swap_timed", {})


@pytest.mark.parametrize("rows, depth, columns", [(32, 800, 1280), (64, 800, 1088), (50, 500, 2048),
                                                  (32, 400, 1000)])
def test_swapped_products_equal_the_plain_product(rows, depth, columns, fresh_swaps):
    """``(a @ b).T`` as ``b.T @ a.T``: the same sums with rows and columns exchanged, on the
    nets' deep few-row shapes (CIFAR-10's second and third layers, LeNet's second), bit for
    bit wherever the check says so, and on OpenBLAS's AVX-512 kernels (where it was measured)
    it does."""
    rng = np.random.default_rng(rows * columns)
    a = rng.standard_normal((rows, depth)).astype(np.float32)
    b = rng.standard_normal((depth, columns)).astype(np.float32)
    swapped = np.empty((columns, rows), np.float32)
    with parallel.blas_single_threaded():
        blas_panels.swapped_product(a, b, swapped)
        plain = np.matmul(a, b)
    np.testing.assert_allclose(swapped.T, plain, rtol=1e-4, atol=1e-4)
    agreed = blas_panels.swap_agrees(rows, depth, columns)
    if agreed:
        np.testing.assert_array_equal(np.ascontiguousarray(swapped.T).view(np.uint32), plain.view(np.uint32))
    if _on_openblas_avx512():
        assert agreed


def test_a_swap_with_other_bits_is_caught_by_the_check(monkeypatch, fresh_swaps):
    """A 'swapped' product that sums the depth in two parts of 300 and 500 rounds differently
    (the BLAS sums 800 as 400 + 400): the check on random operands sees it, and the
    convolution then never takes it."""
    def parts(a, b, out_t):
        np.add(b[:300].T @ a[:, :300].T, b[300:].T @ a[:, 300:].T, out=out_t)
    monkeypatch.setattr(blas_panels, "swapped_product", parts)
    assert not blas_panels.swap_agrees(32, 800, 1280)
    monkeypatch.setattr(convolution, "_swap_pays", lambda *args: True)
    with parallel.limited(1):
        assert not convolution._swaps(32, 800, 1280, np.float32)


def _forward_swapped_and_not(spec_extra, shape, monkeypatch):
    """The top of a convolution with every eligible product swapped, and with swapping off,
    and whether the layer took a swapped product."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    spec = ('type: "Convolution" convolution_param { ' + spec_extra +
            ' weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "constant" value: 0.1 } }')
    monkeypatch.setattr(convolution, "_swap_pays", lambda *args: True)
    # groups one by one even where small, as swapped products are taken
    monkeypatch.setattr(convolution, "GROUP_BATCH_MADDS", 0)
    used = []
    real = convolution.BaseConvolutionLayer._store_swapped.__func__
    monkeypatch.setattr(convolution.BaseConvolutionLayer, "_store_swapped",
                        classmethod(lambda cls, *a: used.append(a[1].shape) or real(cls, *a)))
    tops = []
    with parallel.limited(1):
        for max_rows in (convolution.SWAP_MAX_ROWS, 0):
            monkeypatch.setattr(convolution, "SWAP_MAX_ROWS", max_rows)
            layer, bottoms, top = setup(spec, [x])
            layer.forward(bottoms, top)
            tops.append(top[0].data.copy())
    return tops, bool(used)


@pytest.mark.parametrize("spec_extra, shape", [
    ("num_output: 32 kernel_size: 5 pad: 2", (10, 32, 16, 16)),          # CIFAR-10's conv2
    ("num_output: 64 kernel_size: 5 pad: 2", (10, 32, 8, 8)),            # conv3, batch innermost
    ("num_output: 40 kernel_size: 5 group: 2 bias_term: false", (6, 64, 12, 12))])
def test_convolution_forward_swapped_keeps_the_bits(spec_extra, shape, monkeypatch, fresh_swaps):
    """The forward with every eligible product swapped (and stored from its transpose, per
    group, bias fused) gives the top bit for bit as with swapping turned off."""
    tops, used = _forward_swapped_and_not(spec_extra, shape, monkeypatch)
    # swapped wherever the BLAS agreed (on OpenBLAS it does for these shapes)
    assert used == any(blas_panels._swap_agreed.values())
    np.testing.assert_array_equal(tops[0].view(np.uint32), tops[1].view(np.uint32))


@pytest.mark.parametrize("spec_extra, shape", [
    ("num_output: 8 kernel_size: 4", (1, 16, 4, 4)),         # one item, one position
    ("num_output: 8 kernel_size: 3", (1, 16, 9, 9)),         # one item
    ("num_output: 12 kernel_size: 3 group: 3", (3, 12, 6, 6))])
def test_swapped_products_are_stored_in_the_tops_layout(spec_extra, shape, monkeypatch, fresh_swaps):
    """Small products, where the BLAS may sum in another order swapped (and the check then
    keeps the plain one): taken swapped all the same, the top matches the plain forward up
    to rounding, so the transposed store puts every value and bias in its place."""
    monkeypatch.setattr(blas_panels, "swap_agrees", lambda *args: True)
    tops, used = _forward_swapped_and_not(spec_extra, shape, monkeypatch)
    assert used
    np.testing.assert_allclose(tops[0], tops[1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- row panels
@pytest.fixture
def fresh_rows(monkeypatch):
    """A private memory of the row panels' checks."""
    monkeypatch.setattr(blas_panels, "_row_agreed", {})


@pytest.mark.parametrize("n, depth, batch", [(104, 9216, 10), (4096 // 32 * 3, 4096, 10), (72, 4096, 32),
                                             (75, 1000, 16)])
def test_row_panels_equal_the_plain_product_where_they_agree(n, depth, batch, fresh_rows):
    """Fully connected layers' forward products at small batches (rows of CaffeNet's fc6 and
    fc7 at batch 10, fc7's at batch 32, a depth of 1000 at batch 16; remainders of 8 and 11
    rows): bit for bit wherever the check says so, which on OpenBLAS's AVX-512 build it
    does; up to rounding always."""
    rng = np.random.default_rng(n + depth)
    w = rng.standard_normal((n, depth)).astype(np.float32)
    x = rng.standard_normal((batch, depth)).astype(np.float32)
    out = np.empty((n, batch), np.float32)
    with parallel.blas_single_threaded():
        blas_panels.row_panel_product(w, x.T, out, 32)
        plain = np.matmul(w, x.T)
    np.testing.assert_allclose(out, plain, rtol=1e-4, atol=1e-3)
    agreed = blas_panels.row_panels_agree(n, depth, batch, 32)
    if agreed:
        np.testing.assert_array_equal(out.view(np.uint32), plain.view(np.uint32))
    if _on_openblas_avx512():
        assert agreed


@pytest.mark.parametrize("group_bytes", [1, 3 * 21 * 32 * 10 * 4])
def test_row_panels_in_groups_keep_the_bits(group_bytes, monkeypatch, fresh_rows):
    """Whole panels summed a group at a time (one panel per group, or three: the last group
    short) give the same result as all panels in one group, bit for bit."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8 * 32 + 5, 9216)).astype(np.float32)
    x = rng.standard_normal((10, 9216)).astype(np.float32)
    one_group, grouped = (np.empty((w.shape[0], 10), np.float32) for _ in range(2))
    with parallel.blas_single_threaded():
        blas_panels.row_panel_product(w, x.T, one_group, 32)
        monkeypatch.setattr(blas_panels, "ROW_GROUP_BYTES", group_bytes)
        blas_panels.row_panel_product(w, x.T, grouped, 32)
        plain = np.matmul(w, x.T)
    np.testing.assert_array_equal(grouped.view(np.uint32), one_group.view(np.uint32))
    if blas_panels.row_panels_agree(w.shape[0], 9216, 10, 32):
        np.testing.assert_array_equal(grouped.view(np.uint32), plain.view(np.uint32))


def test_row_panels_in_other_blocks_are_caught_by_the_check(monkeypatch, fresh_rows):
    """Row panels that sum fc6's 9216-deep rows in blocks of 300 instead of the BLAS's 448
    round differently: the check sees it, and the layer then keeps the plain product."""
    monkeypatch.setattr(blas_panels, "BLOCK_DEPTH", 300)
    assert not blas_panels.row_panels_agree(4096, 9216, 10, 32)
    w = np.zeros((4096, 9216), np.float32)
    assert not inner_product._in_row_panels(w, 10)


@pytest.mark.parametrize("spec_extra, shape, threads", [
    ("num_output: 200", (10, 3000), 1),                               # 6 panels + 8 rows
    ("num_output: 200", (10, 3000), 2),                               # shared by two threads
    ("num_output: 96 bias_term: false", (8, 2, 30, 30), 2),           # flattened input
    ("num_output: 200 transpose: true", (10, 3000), 1)])              # weights (K, N): plain
def test_inner_product_forward_in_row_panels_keeps_the_bits(spec_extra, shape, threads, monkeypatch, fresh_rows):
    """The forward with row panels (thresholds lowered so that small layers take them) gives
    the top bit for bit as the plain product, at one and two threads, with and without a
    bias, wherever the check agrees; weights stored transposed keep the plain product."""
    monkeypatch.setattr(inner_product, "ROW_PANEL_MIN_MADDS", 1)
    n, m, depth = int(spec_extra.split()[1]), shape[0], int(np.prod(shape[1:]))
    agreed = blas_panels.row_panels_agree(n, depth, m, inner_product.ROW_PANEL_ROWS)   # before the spy
    used = []
    real = blas_panels.row_panel_product
    monkeypatch.setattr(blas_panels, "row_panel_product", lambda *a: used.append(a[0].shape) or real(*a))
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape).astype(np.float32)
    spec = ('type: "InnerProduct" inner_product_param { ' + spec_extra +
            ' weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "constant" value: 0.1 } }')
    tops = []
    with parallel.limited(threads), parallel.blas_single_threaded():
        for max_batch in (inner_product.ROW_PANEL_MAX_BATCH, 0):
            monkeypatch.setattr(inner_product, "ROW_PANEL_MAX_BATCH", max_batch)
            layer, bottoms, top = setup(spec, [x])
            layer.forward(bottoms, top)
            tops.append(top[0].data.copy())
    np.testing.assert_array_equal(tops[0].view(np.uint32), tops[1].view(np.uint32))
    assert bool(used) == (agreed and "transpose" not in spec_extra)
    if used:        # two threads: each takes whole panels, the remainder rows with the last
        assert sorted(rows for rows, _ in used) == ([n] if threads == 1 else [96, n - 96])
    if _on_openblas_avx512() and spec_extra == "num_output: 200":
        assert used
