"""The loopback S3 server of the local ``postgres`` backend: moto's server with a recording that replays.

moto keeps objects in memory. With ``MOTO_ENABLE_RECORDING`` it appends every request to a JSON-lines
file, and ``nightshift up`` replays that file after a restart so objects outlive ``nightshift down``.
moto's server is threaded and its recorder appends without a lock, so two uploads at once can
interleave their lines and the replay then fails (HTTP 500); and a request recorded before another
may be applied after it. This launcher closes both holes: requests to the store are recorded and
applied one at a time, under one lock, so the file holds whole lines in the order the store saw them.
A last line cut short by a kill is dropped before the server starts (its request was never answered);
any other unreadable line stops the start with an error that names the file and the line.

Run as ``python -m nightshift.local_s3 --host 127.0.0.1 --port 9000`` (``infra/local/s3.sh`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from catalog.files import write_atomic

# moto's own control endpoints (the replay among them) stay outside the lock: the replay handler
# sends the recorded requests back to this server, and they must be able to take it.
_CONTROL_PREFIX = "/moto-api/"


class RecordingError(RuntimeError):
    """The recording cannot be replayed as it is."""


def check_recording(path: Path) -> int:
    """Make ``path`` replayable: drop a cut-off last line, refuse any other unreadable one.

    Returns:
        The number of lines dropped (0 or 1).

    Raises:
        RecordingError: a line before the last is not JSON; the message names it and the fix.
    """
    if not path.is_file():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, as every whole entry does
    bad = [n for n, line in enumerate(lines, 1) if line.strip() and not _is_json(line)]
    if bad:
        raise RecordingError(
            f"the S3 recording {path} has unreadable lines ({', '.join(map(str, bad[:10]))}); it was "
            "probably written by an older server that interleaved concurrent uploads. Move it away to "
            "start with an empty store, or restore it from a copy"
        )
    if not tail:
        return 0
    if _is_json(tail):  # a whole entry without its newline: keep it, end it properly
        write_atomic(path, data + b"\n", sync=True)
        return 0
    write_atomic(path, data[: len(data) - len(tail)], sync=True)
    return 1


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def serialise_requests() -> None:
    """Record and apply every request to the store one at a time (see the module docstring)."""
    from flask import request as flask_request
    from moto.core import utils

    lock = threading.Lock()
    call = utils.convert_to_flask_response.__call__

    def locked_call(self: Any, args: Any = None, **kwargs: Any) -> Any:
        if flask_request.path.startswith(_CONTROL_PREFIX):
            return call(self, args, **kwargs)
        with lock:
            return call(self, args, **kwargs)

    utils.convert_to_flask_response.__call__ = locked_call  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    recording = os.environ.get("MOTO_RECORDER_FILEPATH") if os.environ.get("MOTO_ENABLE_RECORDING") else None
    if recording:
        try:
            dropped = check_recording(Path(recording))
        except RecordingError as e:
            sys.exit(f"error: {e}")
        if dropped:
            print(f"dropped a cut-off last line of {recording} (its request was never answered)", flush=True)
    serialise_requests()
    from moto.server import main as moto_main

    moto_main(["--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    main()
