"""What a training run prints: one line per evaluation always (stdout); between evaluations, a live
progress line on stderr when it is a terminal, or else (a log file, a pipe, a batch job) the same
line printed plainly on stdout once nothing was printed for PLAIN_INTERVAL_S seconds, so a log
with long evaluation intervals still shows the run is alive."""

import math
import sys
import time

PLAIN_INTERVAL_S = 60.0  # between progress lines printed to a file or pipe


def format_duration(seconds):
    """63.2 -> '1m03s'."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_rate(tokens_per_sec):
    """12345 -> '12.3k'."""
    return f"{tokens_per_sec / 1000:.1f}k" if tokens_per_sec >= 1000 else f"{tokens_per_sec:.0f}"


class Progress:
    """Prints `prefix` + messages; on a terminal also redraws a step/loss/tokens/ETA line, elsewhere
    prints it as a plain line after `plain_interval_s` without any line."""

    def __init__(self, total_steps, tokens_per_step, prefix="", stream=None, interval_s=0.5, unit="tok",
                 plain_interval_s=PLAIN_INTERVAL_S):
        """`tokens_per_step` counts `unit`s (tokens; a classifier's examples)."""
        self.total_steps, self.tokens_per_step, self.prefix, self.unit = total_steps, tokens_per_step, prefix, unit
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.interval_s = interval_s if self.interactive else plain_interval_s
        self._last_draw = 0.0
        self._start_time, self._start_step = time.perf_counter(), None

    def log(self, message):
        """One permanent line."""
        self._clear()
        print(f"{self.prefix}{message}", file=sys.stdout, flush=True)
        if not self.interactive:
            self._last_draw = time.perf_counter()

    def eta_s(self, step):
        """Seconds left at the average speed since this process started training."""
        if self._start_step is None or step <= self._start_step:
            return float("nan")
        per_step = (time.perf_counter() - self._start_time) / (step - self._start_step)
        return per_step * (self.total_steps - step)

    def start(self, step):
        """Training starts (or resumes) at `step`."""
        self._start_time, self._start_step = time.perf_counter(), step
        if not self.interactive:
            self._last_draw = self._start_time  # the first plain line comes an interval after the start

    def update(self, step, loss_fn):
        """Redraw the live line (or print the plain one) at most every interval; `loss_fn` is only called then."""
        if time.perf_counter() - self._last_draw < self.interval_s:
            return
        self._last_draw = time.perf_counter()
        rate = (step - self._start_step) * self.tokens_per_step / max(self._last_draw - self._start_time, 1e-9)
        line = (f"{self.prefix}step {step}/{self.total_steps}  loss {loss_fn():.3f}  "
                f"{format_rate(rate)} {self.unit}/s  ETA {format_duration(self.eta_s(step))}")
        if self.interactive:
            self.stream.write("\r" + line.ljust(79))
            self.stream.flush()
        else:
            print(line, file=sys.stdout, flush=True)

    def _clear(self):
        if self.interactive and self._last_draw:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()
