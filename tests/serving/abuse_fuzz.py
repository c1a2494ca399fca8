"""Schemathesis against a live endpoint's own ``/openapi.json``, through its command line.

The CLI runs every phase (coverage: boundary and invalid values of each field; fuzzing: generated
requests, schema-valid and not) with the checks below, and exits non-zero on any failure. Its
pytest loader (``schemathesis.pytest.from_fixture``) reads a node attribute pytest 9 no longer
has, and the CLI is also what anyone would rerun by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.serving.abuse_kit import Target

# No 5xx; status, content type and body as the spec declares them; a request the schema forbids is
# refused; an operation that declares auth enforces it (probed without a key and with a wrong one).
# Not `positive_data_acceptance`: a schema-valid request may still be refused for what the schema
# cannot know (the model's context length, serve.max_n, a feedback id that does not exist).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "ignored_auth",
)
# Statuses that count as refusing a request the schema forbids: Schemathesis's defaults, plus 408 and
# 413, which a generated body can earn by its size (serve.max_body_bytes) before it is even parsed.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "408", "409", "413", "415", "422", "428",
                     "429", "5xx"]
"""


@dataclass
class FuzzResult:
    returncode: int
    output: str
    generated: int = 0  # test cases Schemathesis generated (each is at least one request)
    failures: int = 0  # distinct failures it reported
    statuses: Counter = field(default_factory=Counter)  # from the HAR file, when one was asked for

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


def schemathesis_cli() -> str:
    exe = Path(sys.executable).with_name("schemathesis")
    return str(exe) if exe.exists() else (shutil.which("schemathesis") or "schemathesis")


def run_schemathesis(
    target: Target, examples: int, workdir: Path, *, seed: int = 1, har: bool = False, timeout: float = 1800
) -> FuzzResult:
    """Run ``schemathesis run`` in ``workdir`` with ``examples`` per operation and the valid key, and
    parse its summary; ``har`` also records every request and answer (``workdir/requests.har``)."""
    cmd = [
        schemathesis_cli(), "run", target.url + "/openapi.json",
        "--header", f"Authorization: Bearer {target.key}",
        "--checks", ",".join(CHECKS),
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(examples),
        "--seed", str(seed),
        "--workers", "1",
        "--request-timeout", "60",
        "--generation-database", "none",
        "--continue-on-failure",
        "--no-color",
    ]  # fmt: skip
    (workdir / "schemathesis.toml").write_text(CONFIG)  # the CLI reads it from its working directory
    har_path = workdir / "requests.har"
    if har:
        cmd += ["--report", "har", "--report-har-path", str(har_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    out = done.stdout + done.stderr
    res = FuzzResult(done.returncode, out)
    if m := re.search(r"(\d+) generated", out):
        res.generated = int(m.group(1))
    if m := re.search(r"found (\d+) unique failure", out):
        res.failures = int(m.group(1))
    if har and har_path.is_file():
        entries = json.loads(har_path.read_text())["log"]["entries"]
        res.statuses = Counter(e["response"]["status"] for e in entries)
    return res
