"""Progress display for training: one line per epoch, redrawn in place on a terminal.

On a TTY the bar is redrawn with '\\r' (at most ten times a second, so drawing never
costs more than the steps it reports). When the stream is a file or a pipe (CI logs,
`| tee`), carriage returns would pile up as garbage, so a plain line is written only
every `interval` seconds instead; short epochs then print nothing but their summary.
`quiet=True` silences everything. Only the standard library is used.
"""
import shutil
import sys
import time


def is_tty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):     # no isatty, or a closed stream
        return False


class Progress:
    """A bar for `total` steps: percent, steps/s and the running (epoch-mean) loss.

        bar = Progress(len(batches), label="epoch 1/3")
        for xb, yb in batches:
            bar.update(loss=program.train_step(...), samples=len(xb))
        bar.close()
    """

    def __init__(self, total, label="", *, stream=None, quiet=False, interval=None):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.tty = is_tty(self.stream)
        self.interval = interval if interval is not None else (0.1 if self.tty else 10.0)
        self.started = self.last_draw = time.perf_counter()
        self.steps = self.samples = 0
        self.loss_sum = 0.0
        self.drawn = False

    @property
    def running_loss(self):
        """The mean loss of this epoch's steps so far, weighted by batch size."""
        return self.loss_sum / self.samples if self.samples else float("nan")

    def update(self, loss, samples=1):
        self.steps += 1
        self.samples += samples
        self.loss_sum += loss * samples
        now = time.perf_counter()
        if not self.quiet and (now - self.last_draw >= self.interval or self.steps == self.total):
            self.last_draw = now
            self._draw(now)

    def line(self, now=None, width=24):
        elapsed = max((now or time.perf_counter()) - self.started, 1e-9)
        fraction = min(self.steps / self.total, 1.0)
        filled = int(fraction * width)
        bar = "#" * filled + "." * (width - filled)
        return (f"{self.label} [{bar}] {fraction:4.0%} {self.steps}/{self.total} "
                f"{self.steps / elapsed:,.0f} steps/s  loss {format_loss(self.running_loss)}")

    def _draw(self, now):
        text = self.line(now)
        if self.tty:
            columns = shutil.get_terminal_size((80, 24)).columns
            self.stream.write("\r" + text[:columns - 1].ljust(columns - 1))
        elif self.steps < self.total:          # the summary line covers the end
            self.stream.write(text + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self):
        """Erase the bar (on a TTY) so the epoch summary takes its place."""
        if self.tty and self.drawn and not self.quiet:
            columns = shutil.get_terminal_size((80, 24)).columns
            self.stream.write("\r" + " " * (columns - 1) + "\r")
            self.stream.flush()
        self.drawn = False

    def message(self, text):
        """Write a whole line (an epoch summary, a warning) below or instead of the bar."""
        if not self.quiet:
            self.close()
            self.stream.write(text + "\n")
            self.stream.flush()


def format_loss(value):
    """Four decimals, as long as that stays short: a diverging loss of 2e37 is not
    printed with 38 digits."""
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4e}"


def format_epoch(record, epochs):
    """One summary line for an epoch record from runtime.train."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {format_loss(record['train_loss'])}"]
    if record.get("train_accuracy") is not None:
        parts.append(f"acc {record['train_accuracy']:.2%}")
    if record.get("test_loss") is not None:
        parts.append(f"test loss {format_loss(record['test_loss'])}")
    if record.get("test_accuracy") is not None:
        parts.append(f"test acc {record['test_accuracy']:.2%}")
    parts.append(f"{record['samples_per_s']:,.0f} samples/s")
    parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)
