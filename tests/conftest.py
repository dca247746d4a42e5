import logging

import pytest


@pytest.fixture(autouse=True)
def _imagesynth_logs_propagate():
    """The CLI may turn off propagation; tests read warnings through caplog."""
    logger = logging.getLogger("imagesynth")
    old = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = old
