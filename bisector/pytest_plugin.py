"""The pytest plugin of bisector (entry point ``pytest11``): the ``bisector_gate`` fixture.

It imports nothing heavy until a test asks for the fixture, so having bisector installed does
not slow down pytest's start in other projects.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def bisector_gate(tmp_path):
    """Reproducibility assertions (``assert_reproducible(fn, steps)``,
    ``assert_script_reproducible(script, args, steps)``) whose traces stay in tmp_path.

    Example:
        >>> def test_two_steps_are_reproducible(bisector_gate):
        ...     bisector_gate.assert_reproducible(train_two_steps)
    """
    from bisector.testing import Gate

    return Gate(tmp_path)
