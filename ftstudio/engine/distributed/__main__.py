"""``python -m ftstudio.engine.distributed RUN.yaml [--resume RUN_DIR]``: one rank of a torchrun group."""
import sys

from ftstudio.engine.distributed.fsdp import main

sys.exit(main())
