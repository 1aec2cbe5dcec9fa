"""The engine: everything that fine-tunes, below the CLI and the GUI and above ``core``.

Rooms (each subpackage's ``__init__`` is its face): ``data`` (files → rows → tokens), ``models`` (sources →
facts → loaded models → export), ``memory`` (the plan, what fits, measurements), ``train`` (the loop on one
device), ``forgetting`` (θ0, L2-SP, EWC, mixing, retention, drift), ``distributed`` (torchrun + FSDP2);
beside them ``hardware`` (NVML, psutil) and ``sinks`` (event reporters). Arrows point one way only:
distributed → train → forgetting → data/memory → models → core.

:func:`run` is the one entry the CLI and the GUI call.
"""
from __future__ import annotations


def check_run(config) -> None:
    """What would fail only after the run started (or with a traceback) is refused now, with a ConfigError or a
    ModelError that names the field: GPUs torch does not see, a model config that cannot be trained, a seq_len
    beyond the model's context. The CLI calls it before it prints anything; :func:`run` calls it for the GUI."""
    from ftstudio.core.errors import ConfigError
    from ftstudio.engine.memory.shape import check_model_config
    from ftstudio.engine.models import describe_model

    gpus = config.hardware.gpus
    if gpus and config.hardware.device != "cpu":  # gloo ranks on the CPU need no CUDA
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "" if torch.version.cuda else f" (torch {torch.__version__} is a CPU build)"
            raise ConfigError("hardware.gpus", f"--gpus {','.join(map(str, gpus))} asks for CUDA GPUs, but torch "
                                               f"sees none on this machine{build}; leave out --gpus to train on "
                                               "the CPU")
        missing = [g for g in gpus if g >= count]
        if missing:
            raise ConfigError("hardware.gpus", f"GPU {missing[0]} does not exist: torch sees {count} "
                                               f"(0 to {count - 1})")
    if len(gpus) > 1:
        check_sharded(config)
    info = describe_model(config.model.source, trust_remote_code=config.model.trust_remote_code,
                          revision=config.model.revision)
    check_model_config(info.config, config.model.source)
    from ftstudio.core.errors import ModelError
    from ftstudio.engine.models import missing_tokenizer
    missing = missing_tokenizer(info)   # a folder without its tokenizer: said before the data is read
    if missing:
        raise ModelError(missing)
    ctx = info.context_length
    if ctx and config.data.seq_len > ctx:
        raise ConfigError("data.seq_len", f"{config.data.seq_len} is longer than {config.model.source}'s context "
                                          f"length ({ctx} positions); use --seq-len {ctx} or less")


def check_sharded(config) -> None:
    """What cannot run under FSDP2 (several GPUs), refused before the launch with the nearest option that works.

    The L2-SP / EWC pull with the optimizer step inside backward: FSDP hands each parameter its reduced gradient
    shard and steps it at once, before the pull's gradient (added to the local shard) could join it, so the
    parameter would be stepped twice. Everything else a single GPU runs also runs sharded."""
    from ftstudio.core.errors import ConfigError

    r = config.regularize
    if config.memory.optimizer_in_backward and (r.l2sp > 0 or r.ewc > 0):
        raise ConfigError("memory.optimizer_in_backward",
                          "cannot be combined with L2-SP or EWC on several GPUs (FSDP steps each gradient shard "
                          "before the pull toward θ0 reaches it); turn optimizer_in_backward off (keep the rest of "
                          "the preset), or keep it and guard against forgetting with mix_fraction instead")


def run(config, reporter=None, control=None, *, resume_from=None, allow_config_change: bool = False):
    """Run a fine-tune and return its ``RunFinished`` or ``RunFailed``: in this process on one device, or,
    when several GPUs are ticked, as a supervised ``torchrun`` FSDP2 subprocess whose rank 0 streams the same
    events. ``reporter`` receives every event; ``control`` (stop, pause, save now) is polled between steps.
    A run that :func:`check_run` refuses ends before anything is written, with one ``RunFailed``.
    ``allow_config_change``: a resume may continue with a config that differs from its checkpoint's (one GPU)."""
    from ftstudio.core.errors import FTStudioError
    from ftstudio.core.events import RunFailed

    try:
        check_run(config)
    except FTStudioError as e:
        event = RunFailed(reason=str(e), advice=getattr(e, "advice", ""), error_type=type(e).__name__)
        if reporter is not None:
            reporter(event)
        return event
    if len(config.hardware.gpus) > 1:
        from ftstudio.engine.distributed import run_distributed
        return run_distributed(config, reporter, control, resume_from=resume_from)
    from ftstudio.engine.train import Trainer
    return Trainer(config, reporter, control, resume_from=resume_from, allow_config_change=allow_config_change).run()
