"""Layer-wise adaptive optimizers (LARS, LARC, TVLARS, LAMB, LAMBC, CLARS), schedulers and telemetry.

Pure PyTorch: this package never imports Ray or MLflow.
"""

from optim.clars import CLARS, microbatch_grad_norms, per_sample_grad_norms
from optim.factory import OPTIMIZERS, build_optimizer, optimizer_hparams
from optim.lamb import LAMB
from optim.lambc import LAMBC
from optim.larc import LARC
from optim.lars import LARS
from optim.schedulers import SCHEDULERS, build_scheduler
from optim.telemetry import TelemetryBatch, TrustRatioTelemetry
from optim.tvlars import TVLARS, delay_steps_from_epochs, tvlars_phi

__all__ = [
    "CLARS", "LAMB", "LAMBC", "LARC", "LARS", "OPTIMIZERS", "SCHEDULERS", "TVLARS", "TelemetryBatch",
    "TrustRatioTelemetry", "build_optimizer", "build_scheduler", "delay_steps_from_epochs",
    "microbatch_grad_norms", "optimizer_hparams", "per_sample_grad_norms", "tvlars_phi",
]
