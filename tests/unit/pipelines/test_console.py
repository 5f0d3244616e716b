"""The quiet console of `rtune run`: what outlives it still reaches the terminal."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from rtune.pipelines.console import RunConsole


def test_a_log_handler_made_during_the_run_writes_to_the_terminal_after_it(tmp_path: Path) -> None:
    """A server thread's logging handler bound to the console while the run was on (werkzeug
    does that at its first request) must not raise on a closed log file once the run is over."""
    terminal = io.StringIO()
    console = RunConsole(terminal, tmp_path / "logs")
    handler = logging.StreamHandler(console)
    logger = logging.getLogger("rtune-test-late-server")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("during the run")
        console.close()
        logger.warning("after the run")
    finally:
        logger.removeHandler(handler)
    assert "during the run" in (tmp_path / "logs" / "pipeline.log").read_text()
    assert terminal.getvalue() == "after the run\n"
