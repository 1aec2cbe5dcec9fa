"""The distributed room: several GPUs through a supervised ``torchrun`` with FSDP2 sharding.

- ``launch.py``: the supervisor (``run_distributed``: torchrun as a subprocess, rank 0's events back to the
  caller, stop / pause through a control file) and the cluster launch script;
- ``fsdp.py``: one rank (``FSDPTrainer``: the single-device ``Trainer`` with FSDP2 hooks); run by
  ``python -m ftstudio.engine.distributed`` (``__main__.py``);
- ``checkpoint.py``: sharded DCP checkpoints and the gathered export.
The launcher and the FSDP hooks import the trainer, never the reverse.
"""
from ftstudio.engine.distributed.launch import launch_script, run_distributed, torchrun_command

__all__ = ["run_distributed", "launch_script", "torchrun_command"]
