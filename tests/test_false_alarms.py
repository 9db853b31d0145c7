"""No false alarms: deterministic scripts, many runs of `bisector find`, zero divergences.

Slow (about 10 minutes on 2 cores): runs only with BISECTOR_SLOW=1, e.g.
    BISECTOR_SLOW=1 python -m pytest -q tests/test_false_alarms.py
The same run as a benchmark: python benchmarks/false_alarms.py --repeats 20
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("BISECTOR_SLOW"), reason="set BISECTOR_SLOW=1"),
]


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "false_alarms", REPO / "benchmarks" / "false_alarms.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", list(_benchmark().CASES))
def test_deterministic_script_never_diverges(case):
    row = _benchmark().run_case(case, repeats=int(os.environ.get("BISECTOR_REPEATS", "20")))
    assert (row["diverged"], row["errors"], row["inconclusive"]) == (0, 0, 0), row
