"""How often a stream is written: the per-stream interval, stretched when many streams are open."""

from __future__ import annotations

import pytest

from core.serve_config import ServeConfig
from serving.streams import StreamingMixin


@pytest.mark.parametrize(
    ("interval_ms", "writes_per_s", "open_streams", "gap_s"),
    [
        (20, 250, 1, 0.020),  # a lone stream: the interval
        (20, 250, 4, 0.020),  # 4 x 50 writes/s is within 250
        (20, 250, 16, 0.064),  # 16 streams share 250 writes/s
        (20, 0, 16, 0.020),  # no replica-wide aim
        (0, 250, 1, 0.004),  # every token at once, but a lone stream is still within the aim
    ],
)
def test_stream_gap(interval_ms: float, writes_per_s: float, open_streams: int, gap_s: float) -> None:
    s = StreamingMixin()
    s.cfg = ServeConfig(stream_interval_ms=interval_ms, stream_writes_per_s=writes_per_s)
    s._open_streams = open_streams
    assert s.stream_gap() == pytest.approx(gap_s)


def test_bad_write_rate_is_named() -> None:
    with pytest.raises(ValueError, match="stream_writes_per_s"):
        ServeConfig(stream_writes_per_s=-1)
