"""The one run logger: a CSV of metrics, TensorBoard event files, and progress that reads well
both on a terminal and in a log file.

    logger = RunLogger("runs/ppo", step_name="iteration")
    logger.log(1, {"env/gold_mean": 0.41, "objective/kl": 0.3})   # a row of metrics.csv
    logger.close()

    bar = Progress(total=150_000, desc="ppo", unit="tok")
    bar.update(640, gold=0.41)   # redraws on a terminal; a line every ~10 s in a log file
    bar.close()

Rows may have different keys (an evaluation every tenth iteration adds columns to those
rows only): the CSV has the union of the keys and empty cells where a row has no value,
and reading it back gives each row only the keys it had.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path

from textenv.storage import atomic_write


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows of a metrics CSV; an empty cell means "no value" and is left out of its row."""
    path = Path(path)
    rows = []
    with open(path, newline="") as f:
        for line, raw in enumerate(csv.DictReader(f), start=2):
            row = {}
            for key, value in raw.items():
                if value in ("", None):
                    continue
                try:
                    row[key] = float(value)
                except ValueError:
                    raise ValueError(f"{path}:{line}: column {key!r} holds {value!r}, "
                                     f"not a number") from None
            rows.append(row)
    return rows


class RunLogger:
    """Metrics to `<run_dir>/<filename>` (rewritten atomically after every row, so a kill never
    leaves a torn file) and, if `tensorboard`, to TensorBoard event files in `run_dir`.

    `resume=True` reads the existing CSV back; `truncate(step)` then drops the rows logged
    after the checkpoint being resumed, so the continued run does not repeat them.
    """

    def __init__(self, run_dir: str | Path, *, filename: str = "metrics.csv",
                 step_name: str = "iteration", tensorboard: bool = True, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / filename
        self.step_name = step_name
        self.rows: list[dict[str, float]] = []
        if resume and self.path.exists():
            self.rows = read_metrics_csv(self.path)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # a slow import: only when asked

            self.writer = SummaryWriter(str(self.run_dir))

    def truncate(self, last_step: int) -> None:
        """Keep only rows with step <= last_step."""
        self.rows = [r for r in self.rows if r.get(self.step_name, 0) <= last_step]

    def log(self, step: int, metrics: dict) -> None:
        row = {self.step_name: step}
        for k, v in metrics.items():
            if v is not None:
                row[k] = float(v)
        self.rows.append(row)
        if self.writer is not None:
            for k, v in row.items():
                if k != self.step_name and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, buf.getvalue())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Progress:
    """A progress bar on a terminal (tqdm), plain lines elsewhere.

    When the output is not a terminal (CI, `make demo > log`), a carriage-return bar would
    make one endless line; instead a line `desc: done/total unit (pct) key=value ...` is
    printed at most every `interval` seconds, and once at the end.
    """

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", *,
                 enabled: bool = True, initial: int = 0, interval: float = 10.0, file=None):
        self.file = file or sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.n, self.interval, self.enabled = initial, interval, enabled
        self.postfix: dict[str, object] = {}
        self._tty = bool(getattr(self.file, "isatty", lambda: False)())
        self._bar = None
        self._t0 = self._last = time.perf_counter()
        if enabled and self._tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.file)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        self.postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()},
                                      refresh=False)
        elif time.perf_counter() - self._last >= self.interval:
            self._print()

    def _print(self) -> None:
        self._last = time.perf_counter()
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f" {k}={_fmt(v)}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done} {self.unit}{pct}{extra} "
              f"[{self._last - self._t0:.0f} s]", file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.n:
            self._print()
        self.enabled = False


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
