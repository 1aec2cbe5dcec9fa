"""PyInstaller runtime hook: runs inside the bundle before any of FT Studio's code (and before torch is imported).

- A windowed launch (double-click, a .desktop entry) has sys.stdout/sys.stderr = None; tqdm, logging and
  print would raise on them, so they go to os.devnull instead.
- torch.compile needs a C compiler and the Python headers at run time, which a lab machine may lack and the
  bundle does not ship: Dynamo is switched off (torch.compile then returns the model unchanged and training
  runs eagerly) unless the user sets TORCH_COMPILE_DISABLE=0 and TORCHDYNAMO_DISABLE=0 themselves.
- FTSTUDIO_FROZEN=1 lets the engine and the GUI tell the user why compile is off.
"""
import os
import sys

if sys.stdout is None:
    sys.stdout = open(os.devnull, "w")
if sys.stderr is None:
    sys.stderr = open(os.devnull, "w")
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # torch._dynamo.config.disable
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # torch._dynamo.optimize returns a no-op decorator
# Started with an empty environment (env -i, some launchers), the C locale makes Qt warn and guess; say UTF-8.
if not any(os.environ.get(k) for k in ("LC_ALL", "LC_CTYPE", "LANG")):
    os.environ["LC_ALL"] = "C.UTF-8"
os.environ.setdefault("FTSTUDIO_FROZEN", "1")
