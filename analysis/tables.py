"""Writing tables: the one CSV writer of the analysis command-line tools."""
import csv
import math
from dataclasses import asdict, is_dataclass
from pathlib import Path


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _cell(v) -> str:
    """None and non-finite floats as empty cells; floats in full precision (repr)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return repr(v) if isinstance(v, float) else str(v)


def write_csv(path: Path, rows: list, first=()) -> None:
    """Rows (dicts, or dataclass records: their fields) as CSV; columns: `first`, then every other key in
    order of appearance."""
    rows = [asdict(r) if is_dataclass(r) else r for r in rows]
    fields = list(first)
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in fields})
