"""Rich tables of `ftstudio eval` (base, fine-tuned, Δ with standard errors) and `ftstudio interpolate --alphas`
(task metric and retention per α). Printed on stderr, so that stdout stays free for --json."""
from __future__ import annotations


def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _cell(score: dict | None, signed: bool = False) -> str:
    if not score or score.get("value") is None:
        return "-"
    text = f"{score['value']:+.4f}" if signed else f"{score['value']:.4f}"
    return text + (f" ± {score['stderr']:.4f}" if score.get("stderr") is not None else "")


def benchmark_table(record: dict):
    from rich.table import Table

    from ftstudio.engine.benchmarks import score_rows

    labels = list(record["models"])
    names = {"base": "Base", "fine_tuned": "Fine-tuned", "model": "Score"}
    table = Table(title="Benchmarks (lm-evaluation-harness)", title_justify="left")
    table.add_column("Task")
    table.add_column("Metric")
    for label in labels:
        table.add_column(names.get(label, label), justify="right")
    if "delta" in record:
        table.add_column("Δ", justify="right")
    for row in score_rows(record):
        cells = [row["task"], row["metric"], *(_cell(row[label]) for label in labels)]
        if "delta" in record:
            cells.append(_cell(row.get("delta"), signed=True))
        table.add_row(*cells)
    return table


def _num(x, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def sweep_table(result: dict):
    from rich.table import Table

    metric = result.get("task_metric", "eval loss")
    table = Table(title="θ(α) = (1−α)·θ0 + α·θ*", title_justify="left")
    table.add_column("α", justify="right")
    table.add_column(f"task {metric}", justify="right")
    table.add_column("task gain kept", justify="right")
    table.add_column("retention loss", justify="right")
    table.add_column("retention loss recovered", justify="right")
    bench = [k for k in (result.get("points") or [{}])[0].get("benchmarks", {})]
    for k in bench:
        table.add_column(k, justify="right")
    chosen = result.get("chosen_alpha")
    for p in result["points"]:
        mark = " ←" if chosen is not None and p["alpha"] == chosen else ""
        cells = [f"{p['alpha']:g}{mark}", _num(p.get("task")), _num(p.get("task_gain_kept"), ".0%"),
                 _num(p.get("retention")), _num(p.get("retention_recovered"), ".0%")]
        cells += [_num((p.get("benchmarks") or {}).get(k)) for k in bench]
        table.add_row(*cells)
    return table
