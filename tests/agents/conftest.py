"""The `stack` fixture: the built gateway and mock upstream, configured as
docs/agents.md shows (see agent_stack.py)."""

import pytest

from agent_stack import start_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The running gateway and mock, for the whole session."""
    yield from start_stack(tmp_path_factory)

