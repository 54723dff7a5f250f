"""No behaviour change across refactors: every method's 3-step tiny run (losses, regulariser, gradient
norms, validation loss) and its evaluation predictions (generated text, log-likelihood scores) equal
the ones recorded before the redesign (tests/data/regression_baseline.json, made by
tests/regression_record.py on the pre-redesign code). On the recording machine they are
bit-identical; floats are compared to 1e-9 relative so that another CPU's summation order alone
cannot fail the suite, which is far tighter than any real behaviour change."""
import json
import math
from pathlib import Path

import pytest

from regression_record import METHODS, record

BASELINE = json.loads((Path(__file__).parent / "data" / "regression_baseline.json").read_text())


def same(a, b, where):
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (where, a, b)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (where, a.keys(), b.keys())
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, data_dir):
    import os

    return record(tmp_path_factory.mktemp("regression"), data_dir, Path(os.environ["KNOWHIRA_TOKENIZER_DIR"]))


@pytest.mark.parametrize("method", METHODS)
def test_method_computes_what_it_computed_before(recorded, method):
    same(BASELINE[method], recorded[method], method)
