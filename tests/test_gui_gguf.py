"""File → Export GGUF in the window: the export runs on the window's pool and the status line tells the result."""
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("gguf")
from test_gui import make_window, no_dangling_threads  # noqa: E402,F401  (fixtures)
from tiny import save_tiny_causal_bpe  # noqa: E402


def test_export_gguf_from_the_window(make_window, qtbot, tmp_path):
    win = make_window()
    assert any(a.text() == "Export GGUF…" for a in win.menuBar().actions()[0].menu().actions())
    model = save_tiny_causal_bpe(tmp_path / "m", "qwen2")
    out = tmp_path / "m.gguf"
    win.export_gguf(str(model), str(out), "q8_0")
    qtbot.waitUntil(lambda: win.status_text.startswith("Wrote"), timeout=60_000)
    assert out.is_file() and "qwen2, q8_0" in win.status_text
    win.export_gguf(str(tmp_path / "missing"), str(tmp_path / "x.gguf"))
    qtbot.waitUntil(lambda: win.status_text.startswith("GGUF export failed"), timeout=60_000)
    assert "no such folder" in win.status_text and not (tmp_path / "x.gguf").exists()
