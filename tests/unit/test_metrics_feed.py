"""MetricsFeed (ffpipe/run/live.py): a live logger slower than the log cadence gets at most a
bounded number of points waiting; the rest are skipped, counted and said, and the run's end does
not wait for a backlog."""
import threading
import time

from ffpipe.run.live import MetricsFeed, Writer


class SlowLogger:
    """A logger that takes `seconds` a point (a remote server), recording the steps it got."""

    def __init__(self, seconds: float):
        self.seconds, self.steps = seconds, []

    def write(self, step, scalars):
        time.sleep(self.seconds)
        self.steps.append(step)


def test_a_slow_logger_gets_a_bounded_backlog_and_the_skipped_points_are_said(capsys):
    logger, writer = SlowLogger(0.05), Writer("test-telemetry")
    feed = MetricsFeed(logger, writer, ["mlflow"], stage_id=1, waiting=4)
    for step in range(200):  # far faster than 20 points a second
        feed.send(step, {"loss": 1.0})
    started = time.monotonic()
    writer.close()
    took = time.monotonic() - started
    feed.close()
    assert feed.sent == len(logger.steps) and feed.sent + feed.skipped == 200
    assert 4 <= feed.sent <= 8 and logger.steps[:4] == [0, 1, 2, 3]
    assert took < 0.5  # the backlog it waited for: at most 4 points of 0.05 s
    err = capsys.readouterr().err
    assert err.count("stage 1: the live loggers (mlflow) fall behind") == 1
    assert f"were sent {feed.sent:,} log points and skipped {feed.skipped:,}" in err


def test_a_logger_that_keeps_up_gets_every_point(capsys):
    logger, writer = SlowLogger(0.0), Writer("test-telemetry")
    feed = MetricsFeed(logger, writer, ["tensorboard"], stage_id=0, waiting=4)
    for step in range(50):
        feed.send(step, {"loss": 1.0})
        while feed.sent <= step:  # the cadence of a run whose logger keeps up
            time.sleep(0.001)
    writer.close()
    feed.close()
    assert logger.steps == list(range(50)) and feed.skipped == 0
    assert capsys.readouterr().err == ""
    assert not [t for t in threading.enumerate() if t.name == "test-telemetry"]
