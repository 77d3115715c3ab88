"""Training: Caffe's solvers (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam), learning-rate
policies, snapshots with exact resume, and the ``train`` command's flow."""

from ristretto_cli.solver.command import train
from ristretto_cli.solver.lr_policy import POLICIES, check_policy, learning_rate
from ristretto_cli.solver.signals import SignalHandler
from ristretto_cli.solver.solver import Solver
from ristretto_cli.solver.updates import HISTORY_SETS, compute_update

__all__ = ["HISTORY_SETS", "POLICIES", "SignalHandler", "Solver", "check_policy",
           "compute_update", "learning_rate", "train"]
