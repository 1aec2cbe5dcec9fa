"""transformers loaded from several threads at once (the window's warm-up, the data check and the plan at start-up):
its lazy top-level module gave "cannot import name 'AutoTokenizer'" to the threads that lost the race, and the
plan said "Data not read" on the bundled demo. A fresh process, as the app starts."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import threading, sys
    import torch  # noqa: F401  (torch's own import is not the subject here)
    errors = []
    def tokenizer():
        try:
            from ftstudio.core.config import RunConfig
            from ftstudio.engine.models.load import load_tokenizer
            load_tokenizer(RunConfig().replace(source="demo").model)
        except Exception as e:
            errors.append(repr(e))
    def warm_up():
        try:
            from ftstudio.engine.hf_imports import ready
            ready()
        except Exception as e:
            errors.append(repr(e))
    threads = [threading.Thread(target=f) for f in (warm_up, tokenizer, tokenizer, tokenizer)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(errors)
    sys.exit(1 if errors else 0)
""")


def test_threads_that_load_tokenizers_at_once_all_get_them():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
