"""`ftstudio --self-test`: prove that this installation (or PyInstaller bundle) works end to end.

Each check prints one line, ``PASS``/``FAIL``, its seconds and a detail; the exit status is 0 only if
every check passed. The checks use what a lab user's first run uses: the bundled resources and demo
model, the config field docs (the GUI's tooltips), the NVML path (a machine without an NVIDIA driver
is normal, not a failure), the main window drawn offscreen, a few real training steps of a tiny Llama
built on the spot through the real Trainer, and a checkpoint written, reloaded and resumed from.

Everything goes to a temporary folder (kept with ``--keep``); the user's settings are not touched.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from ftstudio.core.dependencies import failing_package

TRAIN_STEPS = 6
RESUME_STEPS = 8
_WORDS = ("the contract shall terminate on notice and the party shall pay the damages of one two three "
          "four five a cat sat with the dog under the sun and the moon").split()


class CheckFailed(Exception):
    """A check whose result is wrong (as opposed to one that crashed)."""


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


# -- checks --------------------------------------------------------------------------------------------
def check_packages(ctx: dict) -> str:
    """Every runtime dependency (recursively, from the installed metadata) has its metadata and imports. A bundle
    that missed a package's code, data files or metadata fails here, naming that package, instead of deep inside
    a model load (transformers 5.25 imports `kernels`, which reads its own JSON file at import)."""
    import importlib

    from ftstudio.core import dependencies

    lost = dependencies.missing()
    _expect(not lost, f"distribution metadata missing for {len(lost)} required packages: {', '.join(lost[:6])}")
    dists = dependencies.runtime_distributions()
    broken, modules = [], 0
    for name in sorted(dists):
        for module in dependencies.top_level_modules(name):
            modules += 1
            try:
                importlib.import_module(module)
            except Exception as e:  # noqa: BLE001 - any failure to import is what this check reports
                broken.append(f"package '{name}' (import {module}: {type(e).__name__}: {str(e)[:160]})")
    _expect(not broken, f"{len(broken)} required packages do not import: " + "; ".join(broken[:4]))
    return f"{len(dists)} distributions, {modules} top-level modules import"


def check_resources(ctx: dict) -> str:
    from ftstudio.engine.data import demo_dataset_path, resources_dir
    from ftstudio.engine.models import demo_model_path

    res = resources_dir()
    _expect(res.is_dir(), f"resources folder missing: {res}")
    data = demo_dataset_path()
    _expect(data.is_file() and data.stat().st_size > 0, f"demo dataset missing: {data}")
    icon = res / "icons" / "ftstudio.svg"
    _expect(icon.is_file(), f"icon missing: {icon}")
    model = demo_model_path()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        _expect((model / name).is_file(), f"demo model file missing: {model / name}")
    return f"resources at {res}; demo model at {model}"


def check_tooltips(ctx: dict) -> str:
    """Every config field has its docstring: the GUI's tooltips and the CLI help read them from the source."""
    import dataclasses

    from ftstudio.core import config as C

    missing = [f"{section}.{f.name}" for section, cls in C.SECTIONS.items()
               for f in dataclasses.fields(cls) if not C.field_docs(cls).get(f.name)]
    _expect(not missing, f"no docstring (tooltip) for {len(missing)} fields, e.g. {missing[:3]}; "
                         f"is ftstudio/core/config.py shipped as source?")
    return f"{len(C.LEAF_TO_SECTION)} fields documented"


def check_runtime(ctx: dict) -> str:
    """torch imports; inside a bundle torch.compile stays off (it needs a compiler and headers the bundle lacks)."""
    import torch

    frozen = bool(getattr(sys, "frozen", False))
    detail = f"torch {torch.__version__}, {'frozen bundle' if frozen else 'python ' + sys.version.split()[0]}"
    if frozen:
        import torch._dynamo.config as dynamo_config
        _expect(bool(dynamo_config.disable), "torch.compile (Dynamo) is enabled inside the bundle; the runtime "
                                             "hook should set TORCH_COMPILE_DISABLE=1 and TORCHDYNAMO_DISABLE=1")
        doubled = torch.compile(lambda x: x * 2)(torch.ones(2))  # must run eagerly: no compiler in the bundle
        _expect(doubled.tolist() == [2.0, 2.0], f"a torch.compile'd function gave {doubled.tolist()}")
        detail += ", torch.compile off (runs eagerly)"
    return detail


def check_nvml(ctx: dict) -> str:
    """NVML present or absent: both fine; what must not happen is a crash without a driver."""
    from ftstudio.engine.hardware import cpu_info, gpu_status_message, list_gpus

    gpus = list_gpus()
    message = gpu_status_message()
    _expect(isinstance(message, str) and message.strip() != "", "gpu_status_message() returned nothing")
    for g in gpus:
        _expect(g.total_bytes is None or g.total_bytes > 0, f"GPU {g.index} reports no memory")
    cpu = cpu_info()
    return f"{len(gpus)} NVIDIA GPU(s): {message}; CPU: {cpu.logical_cores} logical cores"


def check_gui(ctx: dict) -> str:
    """The main window opens offscreen, draws, and closes cleanly (every thread and timer stopped)."""
    try:
        from PySide6.QtCore import QSettings
        from PySide6.QtWidgets import QApplication
    except ImportError as e:
        raise CheckFailed(f"PySide6 cannot be imported: {e}") from None
    from ftstudio.core.config import RunConfig

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "ftstudio"])
    app.setOrganizationName("FTStudio")
    app.setApplicationName("FT Studio self-test")
    from ftstudio.gui.main_window import MainWindow

    settings = QSettings(str(ctx["tmp"] / "settings.ini"), QSettings.Format.IniFormat)
    cfg = RunConfig().replace(output=str(ctx["tmp"] / "gui-runs"))
    win = MainWindow(config=cfg, settings=settings)
    win.ask_on_close = False
    win.resize(1100, 700)
    win.show()
    deadline = time.monotonic() + 60
    while win.checks_pending() and time.monotonic() < deadline:  # the demo model description and data check
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()
    shot = win.grab()
    visible, size = win.isVisible(), (shot.width(), shot.height())
    pending = win.checks_pending()
    win.close()
    app.processEvents()
    threads = win.pool.activeThreadCount()
    win.deleteLater()
    app.processEvents()
    _expect(visible, "the main window did not become visible")
    _expect(size[0] > 0 and size[1] > 0 and not shot.isNull(), "the main window drew nothing")
    _expect(not pending, "the demo model description / data check did not finish within 60 s")
    _expect(threads == 0, f"{threads} worker threads still running after close")
    return f"main window drawn {size[0]}x{size[1]} on the '{app.platformName()}' platform"


def check_train(ctx: dict) -> str:
    """A tiny Llama (built here) trains a few steps through the real Trainer, writing checkpoints."""
    from ftstudio.core.config import RunConfig
    from ftstudio.core.events import CheckpointSaved, StepMetrics
    from ftstudio.engine.train import Trainer

    tmp: Path = ctx["tmp"]
    model_dir = _save_tiny_llama(tmp / "tiny-llama")
    data = _write_dataset(tmp / "data.jsonl")
    cfg = RunConfig().replace(
        source=str(model_dir), task="causal-lm", dataset=str(data), seq_len=32, val_fraction=0.2,
        max_steps=TRAIN_STEPS, batch_size=4, lr=3e-3, schedule="constant", warmup_steps=0, eval_every=0,
        checkpoint_every=3, keep_last=2, device="cpu", precision="fp32", compile=False,
        output=str(tmp / "runs"), run_name="selftest", memory_snapshot_every=3)
    events: list = []
    result = Trainer(cfg, events.append).run()
    _expect(getattr(result, "status", None) == "finished",
            f"training did not finish: {getattr(result, 'reason', result)}")
    losses = [e.loss for e in events if isinstance(e, StepMetrics)]
    _expect(len(losses) == TRAIN_STEPS and all(math.isfinite(x) for x in losses),
            f"expected {TRAIN_STEPS} finite step losses, got {losses}")
    _expect(losses[-1] < losses[0], f"the loss did not go down: {losses[0]:.3f} -> {losses[-1]:.3f}")
    saved = [e.step for e in events if isinstance(e, CheckpointSaved)]
    _expect(saved == [3, 6], f"expected checkpoints at steps 3 and 6, got {saved}")
    _expect(result.final_model and (Path(result.final_model) / "model.safetensors").is_file(),
            "the final model was not exported")
    ctx.update(cfg=cfg, run_dir=Path(result.output_dir), final=Path(result.final_model))
    return f"{TRAIN_STEPS} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, checkpoints at {saved}"


def check_checkpoint(ctx: dict) -> str:
    """The last checkpoint reloads into a fresh model with exactly the exported weights; a run resumes from it."""
    _expect("run_dir" in ctx, "no training run to reload (the train check failed)")
    import torch
    from transformers import AutoModelForCausalLM

    from ftstudio.core.events import RunStarted
    from ftstudio.engine.train.checkpoint import latest_checkpoint, load_checkpoint
    from ftstudio.engine.train import Trainer

    ckpt = latest_checkpoint(ctx["run_dir"] / "checkpoints")
    _expect(ckpt is not None and ckpt.name == f"step-{TRAIN_STEPS}", f"latest checkpoint is {ckpt}")
    fresh = AutoModelForCausalLM.from_pretrained(ctx["model_dir"])  # θ0, not the trained weights
    state = load_checkpoint(ckpt, model=fresh, restore_rng=False)
    final = AutoModelForCausalLM.from_pretrained(ctx["final"])
    want = final.state_dict()
    bad = [n for n, t in fresh.state_dict().items() if not torch.equal(t, want[n])]
    _expect(state.step == TRAIN_STEPS and not bad, f"step {state.step}; weights differ from final/: {bad[:3]}")

    events: list = []
    cfg = ctx["cfg"].replace(max_steps=RESUME_STEPS)
    result = Trainer(cfg, events.append, resume_from=str(ctx["run_dir"]), allow_config_change=True).run()  # longer
    started = [e for e in events if isinstance(e, RunStarted)]
    _expect(getattr(result, "status", None) == "finished" and result.steps == RESUME_STEPS,
            f"the resumed run did not finish at step {RESUME_STEPS}: {getattr(result, 'reason', result)}")
    _expect(started and started[0].resumed_from_step == TRAIN_STEPS,
            f"the run did not resume from step {TRAIN_STEPS}")
    return f"{ckpt.name} reloaded bit-exact; resumed to step {result.steps}"


CHECKS: list[tuple[str, Callable[[dict], str]]] = [
    ("packages", check_packages), ("resources", check_resources), ("tooltips", check_tooltips),
    ("runtime", check_runtime),
    ("nvml", check_nvml), ("gui", check_gui), ("train", check_train), ("checkpoint", check_checkpoint),
]


# -- the tiny model and data, built on the spot (no network, no test files) ------------------------------
def _make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in _WORDS:
        vocab.setdefault(w, len(vocab))
    for ch in ".,!?;:'\"()-0123456789":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


def _save_tiny_llama(path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _write_dataset(path: Path, rows: int = 40) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            words = [_WORDS[(i + k) % 12] for k in range(8)]
            fh.write(json.dumps({"text": " ".join(words) + "."}) + "\n")
    return path


# -- driver --------------------------------------------------------------------------------------------
def _prepare_environment() -> None:
    # A windowed (PyInstaller) app has no stdout/stderr; the report must still go somewhere harmless.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    # No display (a lab machine over ssh, CI): draw the window offscreen instead of failing to connect.
    if not os.environ.get("QT_QPA_PLATFORM") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the self-test never needs the network


def _say(line: str) -> None:
    print(line, flush=True)


def run_self_test(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ftstudio --self-test",
                                     description="Check that FT Studio works on this machine (about a minute).")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with the runs")
    parser.add_argument("--only", action="append", choices=[n for n, _ in CHECKS], metavar="CHECK",
                        help=f"run only this check (repeatable): {', '.join(n for n, _ in CHECKS)}")
    args = parser.parse_args(argv)
    _prepare_environment()
    tmp = Path(tempfile.mkdtemp(prefix="ftstudio-selftest-"))
    ctx: dict = {"tmp": tmp, "model_dir": tmp / "tiny-llama"}
    failed: list[str] = []
    t_all = time.perf_counter()
    _say(f"FT Studio self-test ({'bundle' if getattr(sys, 'frozen', False) else 'python'}; temp folder {tmp})")
    try:
        for name, check in CHECKS:
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            try:
                detail, ok = check(ctx), True
            except CheckFailed as e:
                detail, ok = str(e), False
            except Exception as e:  # noqa: BLE001 - a crash is a failed check, reported with its cause
                detail, ok = f"{type(e).__name__}: {e}", False
                traceback.print_exc(file=sys.stdout)
                culprit = failing_package(e)
                if culprit:
                    detail = f"in package '{culprit}': {detail}"
            if not ok:
                failed.append(name)
            _say(f"{'PASS' if ok else 'FAIL'}  {name:<10} {time.perf_counter() - t0:6.1f} s  {detail}")
    finally:
        if args.keep:
            _say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_all
    if failed:
        _say(f"self-test FAILED ({', '.join(failed)}) in {total:.1f} s")
        return 1
    _say(f"self-test passed in {total:.1f} s")
    return 0
