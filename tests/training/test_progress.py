"""What a run prints between evaluations: a live line on a terminal, a plain line now and then in a log."""

import io

from tflm.training import progress
from tflm.training.progress import Progress


class Clock:
    """A stand-in for time.perf_counter that a test moves forward."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_log_file_gets_a_plain_progress_line_once_nothing_was_printed_for_a_minute(monkeypatch, capsys):
    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    stream = io.StringIO()  # not a terminal, as a file or a pipe
    bar = Progress(1000, 100, "[worker 0] ", stream=stream)
    bar.start(0)
    clock.now += 30
    bar.update(100, lambda: 2.5)
    assert capsys.readouterr().out == ""  # not yet
    clock.now += 31
    bar.update(200, lambda: 2.25)
    assert capsys.readouterr().out == "[worker 0] step 200/1000  loss 2.250  328 tok/s  ETA 4m04s\n"
    clock.now += 59
    bar.log("step 300/1000  val_loss 2.1")
    clock.now += 59  # 118 s since the last progress line, but 59 s since the evaluation line
    bar.update(400, lambda: 2.0)
    assert capsys.readouterr().out == "[worker 0] step 300/1000  val_loss 2.1\n"
    clock.now += 2
    bar.update(410, lambda: 2.0)
    assert capsys.readouterr().out.startswith("[worker 0] step 410/1000  loss 2.000  ")
    assert stream.getvalue() == ""  # no terminal redraws in a file


def test_a_terminal_gets_a_live_line_redrawn_in_place(monkeypatch, capsys):
    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = Progress(1000, 100, stream=stream)
    bar.start(0)
    clock.now += 1
    bar.update(10, lambda: 3.0)
    assert stream.getvalue().startswith("\rstep 10/1000  loss 3.000  1.0k tok/s  ETA ")
    assert capsys.readouterr().out == ""
