"""`ristretto time`: per-layer forward/backward timings, printed as `caffe time` prints them."""

from __future__ import annotations

import time

from ristretto_cli.log import fmt_g, hold_records, logger


def time_net(net, iterations: int = 50) -> dict:
    """Time ``iterations`` forward and backward passes over every layer of ``net``.

    As Caffe's tool, one untimed forward/backward comes first, then every layer's forward in
    order and every layer's backward in reverse order (whatever the net's backward analysis
    says), and the per-layer averages. Returns the averages in milliseconds.
    """
    if iterations <= 0:
        from ristretto_cli.errors import RistrettoError
        raise RistrettoError("--iterations must be positive")
    logger.info("Performing Forward")
    initial_loss = net.forward()
    logger.info("Initial loss: %s", fmt_g(initial_loss))
    logger.info("Performing Backward")
    net.backward()

    layers = net.layers
    forward_us = [0.0] * len(layers)
    backward_us = [0.0] * len(layers)
    forward_total = backward_total = 0.0
    logger.info("*** Benchmark begins ***")
    logger.info("Testing for %d iterations.", iterations)
    clock = time.perf_counter
    total_start = clock()
    for j in range(iterations):
        iter_start = clock()
        for i, layer in enumerate(layers):
            t0 = clock()
            layer.forward(net.bottom_vecs[i], net.top_vecs[i])
            forward_us[i] += (clock() - t0) * 1e6
        mid = clock()
        forward_total += (mid - iter_start) * 1e6
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            t0 = clock()
            if layer.has_backward:
                layer.backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
            backward_us[i] += (clock() - t0) * 1e6
        end = clock()
        backward_total += (end - mid) * 1e6
        logger.info("Iteration: %d forward-backward time: %s ms.", j + 1, fmt_g((end - iter_start) * 1e3))
    total_ms = (clock() - total_start) * 1e3
    logger.info("Average time per layer: ")
    for i, layer in enumerate(layers):
        name = layer.name.rjust(10)
        logger.info("%s\tforward: %s ms.", name, fmt_g(forward_us[i] / 1000 / iterations))
        logger.info("%s\tbackward: %s ms.", name, fmt_g(backward_us[i] / 1000 / iterations))
    result = {
        "forward_ms": forward_total / 1000 / iterations,
        "backward_ms": backward_total / 1000 / iterations,
        "forward_backward_ms": total_ms / iterations,
        "total_ms": total_ms,
        "layers": [(layer.name, f / 1000 / iterations, b / 1000 / iterations)
                   for layer, f, b in zip(layers, forward_us, backward_us)],
    }
    logger.info("Average Forward pass: %s ms.", fmt_g(result["forward_ms"]))
    logger.info("Average Backward pass: %s ms.", fmt_g(result["backward_ms"]))
    logger.info("Average Forward-Backward: %s ms.", fmt_g(result["forward_backward_ms"]))
    logger.info("Total Time: %s ms.", fmt_g(total_ms))
    logger.info("*** Benchmark ends ***")
    return result


def time_model(model: str, *, iterations: int = 50, phase: str = "TRAIN", weights: str = "", level: int = 0,
               stage: str = "", gpu: str = "", semantics: str = "ristretto", seed: int | None = None) -> dict:
    """``caffe time``: build the net for ``phase`` (TRAIN by default), optionally load weights,
    and time it."""
    from ristretto_cli.errors import RistrettoError
    from ristretto_cli.io import read_net_param, read_weights
    from ristretto_cli.net import TEST, TRAIN, Net
    from ristretto_cli.scoring import log_device
    if not model:
        raise RistrettoError("Need a model definition to time.")
    if phase.upper() not in ("TRAIN", "TEST"):
        raise RistrettoError(f"--phase must be TRAIN or TEST, got '{phase}'")
    if iterations <= 0:
        raise RistrettoError(f"--iterations must be positive, got {iterations}")
    with hold_records() as held:  # as test_model: Caffe's order, only an error line on failure
        log_device(gpu)
        param = read_net_param(model)
        net = Net(param, TRAIN if phase.upper() == "TRAIN" else TEST, level=level,
                  stages=stage.split(","), semantics=semantics, seed=seed, verbose=True)
        if weights:
            net.copy_trained_layers_from(read_weights(weights), weights)
    held.release()
    return time_net(net, iterations)
