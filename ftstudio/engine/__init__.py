"""The engine: everything that fine-tunes, below the CLI and the GUI and above ``core``.

Rooms (each subpackage's ``__init__`` is its face): ``data`` (files → rows → tokens), ``models`` (sources →
facts → loaded models → export), ``memory`` (the plan, what fits, measurements), ``train`` (the loop on one
device), ``forgetting`` (θ0, L2-SP, EWC, mixing, retention, drift), ``distributed`` (torchrun + FSDP2);
beside them ``hardware`` (NVML, psutil) and ``sinks`` (event reporters). Arrows point one way only:
distributed → train → forgetting → data/memory → models → core.

:func:`run` is the one entry the CLI and the GUI call.
"""
from __future__ import annotations


def run(config, reporter=None, control=None, *, resume_from=None):
    """Run a fine-tune and return its ``RunFinished`` or ``RunFailed``: in this process on one device, or,
    when several GPUs are ticked, as a supervised ``torchrun`` FSDP2 subprocess whose rank 0 streams the same
    events. ``reporter`` receives every event; ``control`` (stop, pause, save now) is polled between steps."""
    if len(config.hardware.gpus) > 1:
        from ftstudio.engine.distributed import run_distributed
        return run_distributed(config, reporter, control, resume_from=resume_from)
    from ftstudio.engine.train import Trainer
    return Trainer(config, reporter, control, resume_from=resume_from).run()
