"""Every CSV a job writes holds its numbers at full precision (``records.csv_bytes``): a cell read back with
``float`` is the value the job computed, so any table can be recomputed from the files beside it. The typology job's
Mantel r recomputed from its written matrices is tests/jobs/test_typology.py's."""

from __future__ import annotations

import csv
import io

import numpy as np

from engine.stores.records import csv_bytes


def test_csv_cells_read_back_exactly():
    rng = np.random.default_rng(0)
    values = [np.float32(0.1), 0.1, 1 / 3, np.float64(rng.random()), np.float32(rng.random()), 0.999629123456789,
              np.float16(0.3), 1e-300, -2.5e17]  # fmt: skip
    data = csv_bytes(["value"], [[v] for v in values] + [["NA"], [3], [np.int64(7)]])
    cells = [r[0] for r in csv.reader(io.StringIO(data.decode()))][1:]
    assert [float(c) for c in cells[: len(values)]] == [float(v) for v in values]  # float32 as the float64 it equals
    assert cells[len(values) :] == ["NA", "3", "7"]
