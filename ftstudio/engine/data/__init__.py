"""The data room: dataset files → validated rows → token ids with loss masks, split into train/validation.

- ``load.py`` reads files (JSONL/JSON/CSV/TSV/txt ourselves, so every bad row is named; Parquet, saved
  datasets and hub ids through ``datasets``) and knows where the bundled resources lie;
- ``formats.py`` detects the row format and validates each row into one normal form;
- ``render.py`` renders a normal-form row as the model sees it (chat templates) with its loss spans;
- ``collate.py`` packs, pads and batches;
- ``prepare.py`` is the trainer's entry (``prepare_data``), ``check.py`` the checker's and the preview's.

Nothing here imports torch at module level: the GUI validates and previews data before any training.
"""
from ftstudio.engine.data.check import DataReport, check_data, preview, render_example
from ftstudio.engine.data.formats import detect_format
from ftstudio.engine.data.load import demo_dataset_path, load_records, resources_dir
from ftstudio.engine.data.prepare import PreparedData, prepare_data

__all__ = ["resources_dir", "demo_dataset_path", "load_records", "detect_format", "DataReport", "check_data",
           "PreparedData", "prepare_data", "render_example", "preview"]
