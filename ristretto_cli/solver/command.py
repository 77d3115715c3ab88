"""The ``train`` command's flow, as Caffe's ``caffe train`` (tools/caffe.cpp)."""

from __future__ import annotations

from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.solver.signals import SignalHandler, check_effect
from ristretto_cli.solver.solver import Solver


def gpu_request(param, gpu: str) -> str:
    """What GPU the original would use: ``--gpu``, else an explicit ``solver_mode: GPU``."""
    if gpu:
        return f"--gpu={gpu}"
    if param.HasField("solver_mode") and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        return f"solver_mode: GPU, device_id {param.device_id}"
    return ""


def train(solver_path: str, *, weights: str = "", snapshot: str = "", sigint_effect: str = "stop",
          sighup_effect: str = "snapshot", gpu: str = "", level: int = 0, stage: str = "",
          semantics: str = "ristretto", show_progress: bool = True) -> Solver:
    """Read the solver, build it, optionally resume, solve; returns the finished Solver."""
    from ristretto_cli.io import read_solver_param
    if not solver_path:
        raise RistrettoError("Need a solver definition to train (--solver).")
    if snapshot and weights:
        raise RistrettoError("Give a snapshot to resume training or weights to finetune but not both.")
    check_effect(sigint_effect, "--sigint_effect")
    check_effect(sighup_effect, "--sighup_effect")
    param = read_solver_param(solver_path)
    param.train_state.level = level
    # Caffe splits --stage on ',' even when empty: the train state gets the stage "".
    param.train_state.stage.extend(stage.split(","))
    requested = gpu_request(param, gpu)
    if requested:
        logger.warning("GPU requested (%s) but ristretto-cli computes on the CPU only: "
                       "training on the CPU.", requested)
    logger.info("Use CPU.")
    if snapshot:
        del param.weights[:]
    elif weights:
        del param.weights[:]
        param.weights.append(weights)
    with SignalHandler(sigint_effect, sighup_effect) as handler:
        solver = Solver(param, semantics=semantics, action=handler, show_progress=show_progress)
        if snapshot:
            logger.info("Resuming from %s", snapshot)
            solver.restore(snapshot)
        logger.info("Starting Optimization")
        solver.solve()
    logger.info("Optimization Done.")
    return solver
