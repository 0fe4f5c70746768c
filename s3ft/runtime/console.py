"""What a person reads: s3ft's own lines and progress bars on the console; the start-up chatter of
engines, Ray, DeepSpeed and libraries in a log file of the run (`RUN/logs/s3ft.log`). `-v` puts
everything back on the console.

Two streams carry the chatter: Python logging in this process (routed by logger name) and the
output of Ray's workers, which the driver receives and, by default, prints; here it is written to
the log file instead, except the training rank's own `train: ` lines (its progress bar).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_FILE = Path("logs") / "s3ft.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OWN_WORKER_PREFIX = "train: "  # what the training rank prints for the person at the console
WORKER_HANDLER = "ray_print_logs"  # the name Ray registers its printer of worker output under

_state: dict[str, Any] = {"verbose": True, "file": None, "bar_open": False}
worker_log = logging.getLogger("workers")  # not under "ray": Ray's logger does not propagate
library_log = logging.getLogger("libraries")


class _OwnLines(logging.Filter):
    """On the console: s3ft's records, and anyone's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] == "s3ft" or record.levelno >= logging.ERROR


class _Console(logging.StreamHandler):
    """The console's handler: a record that comes while the training bar's line is open (the bar is
    redrawn in place, without a newline) starts a line of its own rather than being glued to the bar."""

    def format(self, record: logging.LogRecord) -> str:
        return _close_bar() + super().format(record)  # inside `emit`, whose errors the handler reports itself


def _close_bar() -> str:
    """What ends the training bar's line where it is open ("\\n", and it is then closed), else ""."""
    was_open, _state["bar_open"] = _state["bar_open"], False
    return "\n" if was_open else ""


def setup(verbose: bool) -> None:
    """Console logging for a command: everything with `verbose`, else s3ft's own lines only."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = _Console(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT))
    if not verbose:
        console.addFilter(_OwnLines())
    root.handlers = [console]
    logging.captureWarnings(True)
    _state.update(verbose=verbose, file=None, bar_open=False)


def log_to(run_dir: str | Path) -> Path:
    """Send everything (also what the console leaves out) to RUN/logs/s3ft.log; say where, once."""
    from s3ft.runtime.preflight import check_output_dir

    path = Path(run_dir) / LOG_FILE
    if _state["file"] == path:
        return path
    check_output_dir(Path(run_dir))  # an unwritable or full run directory is the user's error, said first
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, logging.FileHandler)] + [handler]
    _state["file"] = path
    if not _state["verbose"]:
        print(f"s3ft: engine, Ray and library logs go to {path} (-v shows them here)", file=sys.stderr, flush=True)
    return path


def close() -> None:
    """Close the run's log file when the command ends (an open file keeps its disk busy)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    _state["file"] = None


def quiet_ray_logger() -> None:
    """Before `ray.init`: Ray's own logger prints to stderr itself; route it through ours (to the file)."""
    if not _state["verbose"]:
        ray_log = logging.getLogger("ray")
        ray_log.handlers, ray_log.propagate = [], True


def route_worker_output() -> None:
    """Once Ray is up: workers' output to the log file instead of the console, unless verbose."""
    if _state["verbose"]:
        return
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler(WORKER_HANDLER)
    dispatcher.add_handler(WORKER_HANDLER, _worker_lines)


def _worker_lines(batch: dict[str, Any]) -> None:
    who = batch.get("actor_name") or batch.get("task_name") or "worker"
    for line in _autoscaler_events(batch) if batch.get("pid") == "autoscaler" else batch.get("lines", []):
        text = line.split("\r")[-1]  # a progress bar redraws after a carriage return
        if text.startswith(OWN_WORKER_PREFIX):
            bar = "%|" in text  # Ray hands over each redraw as a line: redraw it in place, as tqdm would
            end = "\n" if not bar or text.startswith(f"{OWN_WORKER_PREFIX}100%") else ""
            # Ray tails a worker's stdout and stderr apart, so a line can arrive while the bar is still
            # being redrawn: it starts a line of its own rather than being glued to the bar's tail.
            start = "\r" if bar else _close_bar()
            print(f"{start}{text}", end=end, file=sys.stderr, flush=True)
            _state["bar_open"] = not end
        else:
            worker_log.info("(%s pid=%s) %s", who, batch.get("pid"), line)


def _autoscaler_events(batch: dict[str, Any]) -> list[str]:
    """Of the autoscaler's output, its events (a node added, demands it cannot meet), as Ray's own printer
    keeps: the rest is its status table, every 5 s, which made most of a run's log."""
    from ray._private.worker import filter_autoscaler_events

    try:
        return list(filter_autoscaler_events(batch.get("lines", [])))
    except AssertionError:  # it asks the GCS which autoscaler runs: no connection left (Ray shutting down)
        return batch.get("lines", [])


@contextlib.contextmanager
def libraries_to_log() -> Iterator[None]:
    """Around calls into libraries that draw progress bars of their own or print (lm-eval, transformers,
    datasets): what they write goes to the log file, unless verbose. Their bars take no switch we could
    turn off from outside (tqdm reads its TQDM_* variables once, at import)."""
    if _state["verbose"]:
        yield
        return
    stream = _LineLog()
    try:
        with contextlib.redirect_stderr(stream), contextlib.redirect_stdout(stream):
            yield
    finally:
        stream.finish()


class _LineLog(io.TextIOBase):
    """A text stream that logs each line written to it (a progress bar's last redraw only)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._log(line)
        return len(text)

    def finish(self) -> None:
        """The unended last line (not on `flush`: a progress bar flushes each redraw)."""
        if self._pending:
            self._log(self._pending)
            self._pending = ""

    @staticmethod
    def _log(line: str) -> None:
        if text := line.split("\r")[-1].strip():
            library_log.info(text)
