"""CSV and TSV files read as leniently as pandas' ``read_csv`` and Python's ``csv`` module read them, while every
row that is truly broken is still named by its 1-based line.

- The separator: the extension's (comma for .csv, tab for .tsv) when it splits every row into the header's
  columns, else what ``csv.Sniffer`` finds among comma, tab, semicolon and pipe (an Excel ``sep=;`` first line
  is obeyed). A changed separator is reported as a warning.
- The quoting: RFC 4180 quoting first (quoted fields may hold separators, newlines and doubled quotes). A TSV whose
  texts merely contain quotes (the SMS spam collection: ``ham<TAB>"Hi" he said``) is read with quotes as plain
  characters, as the TSV convention has it, whenever that gives every line the header's fields; a quote that
  opens a field and is closed in the middle of it is kept the way pandas keeps it (``"abc" def`` → ``abc def``).
  A quote that never closes, so that the rest of the file would be one field, is an error at its row.
- The header: the first row, unless it is plainly data (its values recur below it in the same column, or they
  are numbers or long texts); a headerless file gets its columns named (``label``/``text`` when one column is
  clearly the label), with a warning that says so.

Pure Python (``csv``); ``res`` is the reader's LoadResult (``add``, ``problem``).
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

CANDIDATES = (",", "\t", ";", "|")
SEPARATOR_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
SNIFF_CHARS = 16_384
SAMPLE_CHARS = 262_144
# Column names that make a first row a header whatever else it looks like.
KNOWN_COLUMNS = frozenset("""text label labels class category sentence sentence1 sentence2 content document
    prompt completion instruction input output response question answer context messages conversations id
    title body message review sentiment target tweet comment sms source summary""".split())
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass
class _Reading:
    """The rows of one way of parsing the text: (1-based first line, cells) with blank rows left out."""

    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    error: tuple[int, str] | None = None  # (line, csv's message) where the parser stopped
    quoting: int = csv.QUOTE_MINIMAL

    @property
    def width(self) -> int:
        return len(self.rows[0][1]) if self.rows else 0

    def consistent_fraction(self) -> float:
        data = self.rows[1:]
        return sum(len(c) == self.width for _, c in data) / len(data) if data else 1.0

    @property
    def multiline(self) -> bool:
        return any("\n" in c or "\r" in c for _, cells in self.rows for c in cells)


def _parse(text: str, sep: str, quoting: int, strict: bool) -> _Reading:
    out = _Reading(quoting=quoting)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting, strict=strict)
    start = 1
    try:
        for cells in reader:
            if cells and any(c.strip() for c in cells):
                out.rows.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as e:
        out.error = (start, str(e))
    return out


def _reading(text: str, sep: str) -> _Reading:
    """The most faithful parse with separator ``sep`` (see the module's docstring for the order)."""
    quoted = _parse(text, sep, csv.QUOTE_MINIMAL, strict=True)
    if quoted.error is None and quoted.consistent_fraction() == 1.0 and not quoted.multiline:
        return quoted
    if sep == "\t":  # TSV: quotes are plain characters when every line then has the header's fields
        plain = _parse(text, sep, csv.QUOTE_NONE, strict=False)
        if plain.width >= 2 and plain.consistent_fraction() == 1.0:
            return plain
    if quoted.error is None:
        return quoted  # rows of another width are reported one by one
    lenient = _parse(text, sep, csv.QUOTE_MINIMAL, strict=False)
    lenient.error = quoted.error if "end of data" in quoted.error[1] or "field limit" in quoted.error[1] \
        else lenient.error
    return lenient


def _choose_separator(text: str, default: str) -> str:
    sample = text[:SAMPLE_CHARS]
    if len(text) > SAMPLE_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    readings = {sep: _reading(sample, sep) for sep in CANDIDATES}

    def good(sep: str) -> bool:
        r = readings[sep]
        return r.width >= 2 and r.consistent_fraction() >= 0.9
    if good(default):
        return default
    try:
        sniffed = csv.Sniffer().sniff(sample[:SNIFF_CHARS], delimiters="".join(CANDIDATES)).delimiter
    except csv.Error:
        sniffed = None
    if sniffed in readings and good(sniffed):
        return sniffed
    for sep in CANDIDATES:
        if good(sep):
            return sep
    if readings[default].width <= 1:  # one column: a separator that at least splits the header wins
        wider = [s for s in CANDIDATES if readings[s].width >= 2]
        if wider:
            return max(wider, key=lambda s: readings[s].consistent_fraction())
    return default


def _is_number(s: str) -> bool:
    return bool(_NUMBER.fullmatch(s.strip()))


def _has_header(first: list[str], data: list[list[str]]) -> bool:
    names = [c.strip() for c in first]
    if any(n.casefold() in KNOWN_COLUMNS for n in names) or not data:
        return True
    for i, name in enumerate(names):
        if name and name in {row[i].strip() for row in data[:1000] if len(row) > i}:
            return False  # the first row's value recurs in its column: it is data, not a name
    return not any(_is_number(n) or len(n) > 64 for n in names)


def _headerless_names(width: int, rows: list[list[str]]) -> list[str]:
    """Names for the columns of a file without a header row: text, or label + text, else column1, column2..."""
    if width == 1:
        return ["text"]
    names = [f"column{i + 1}" for i in range(width)]
    if width == 2:
        def label_like(i: int) -> bool:
            values = [r[i].strip() for r in rows if len(r) == 2]
            distinct = set(values)
            return bool(values) and max(map(len, values)) <= 40 and len(distinct) <= max(2, len(values) // 2)
        short = [i for i in (0, 1) if label_like(i)]
        if len(short) == 1:
            names[short[0]], names[1 - short[0]] = "label", "text"
    return names


def read_delimited(text: str, res, default: str, max_cell: int) -> None:
    """Rows of a CSV/TSV text into ``res`` (one dict per row, keyed by the header), every problem named."""
    csv.field_size_limit(max(csv.field_size_limit(), 4 * max_cell))  # longer cells are reported below, by row
    first_line = text.split("\n", 1)[0].strip()
    hinted = re.fullmatch(r"sep=(.)", first_line)  # Excel's "sep=;" line
    if hinted:
        sep, text = hinted.group(1), "\n" + text.split("\n", 1)[1] if "\n" in text else ""
    else:
        sep = _choose_separator(text, default)
    reading = _reading(text, sep)
    name = "TSV" if sep == "\t" else "CSV"
    if sep != default and not hinted:
        res.problem(None, None, f"read as {SEPARATOR_NAMES[sep]}-separated: {SEPARATOR_NAMES[default]}s do not "
                                "split its rows into the header's columns", "warning")
    rows = reading.rows
    unclosed = reading.error is not None and "end of data" in reading.error[1]
    if unclosed and rows and rows[-1][0] >= reading.error[0]:
        rows = rows[:-1]  # the row that swallowed the rest of the file
    if not rows:
        _report_error(res, reading, name)
        return
    (header_row, first), data = rows[0], rows[1:]
    if _has_header(first, [c for _, c in data]):
        header = [c.strip() for c in first]
    else:
        data = rows
        header = _headerless_names(len(first), [c for _, c in data])
        res.problem(None, None, f"the first row holds data, not column names, so the {len(header)} column"
                                f"{'s were' if len(header) > 1 else ' was'} named {', '.join(header)} "
                                "(row 1 is a data row)", "warning")
    if len(header) > 1 and not header[-1] and all(len(c) == len(header) and not c[-1].strip() for _, c in data):
        header = header[:-1]  # every line ends with a separator: an empty last column, nothing in it
        data = [(r, c[:-1]) for r, c in data]
    for i, h in enumerate(header):
        if not h:
            res.problem(header_row, f"column {i + 1}", f"the {name} header has an empty column name; name it in "
                                                           "the header row")
        elif header.index(h) != i:
            res.problem(header_row, h, f"column name {h!r} appears twice in the {name} header; rename one")
    for row, cells in data:
        if len(cells) != len(header):
            plural = "s" if len(cells) != 1 else ""
            res.problem(row, None, f"row has {len(cells)} field{plural} but the header has {len(header)} "
                                   f"({', '.join(header)}); check quoting and the separator "
                                   f"({SEPARATOR_NAMES.get(sep, repr(sep))})")
            continue
        long = [h for h, c in zip(header, cells) if len(c) > max_cell]
        if long:
            res.problem(row, long[0], f"cell is over {max_cell:,} characters; is a quote unclosed?")
            continue
        res.add(dict(zip(header, cells)), row)
    _report_error(res, reading, name)


def _report_error(res, reading: _Reading, name: str) -> None:
    if reading.error is None:
        return
    row, message = reading.error
    if "end of data" in message:
        res.problem(row, None, f"a quote opened in this row is never closed, so the rest of the file would be one "
                               f"field (an unclosed quote); close it, or double each quote inside a quoted field")
    elif "field limit" in message:
        res.problem(row, None, f"a field runs past {csv.field_size_limit():,} characters: an unclosed quote?")
    else:
        res.problem(row, None, f"malformed {name}: {message} (an unclosed quote?)")
