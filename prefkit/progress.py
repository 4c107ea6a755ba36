"""One rich progress bar for long work: drawn on the main process only, a no-op with --quiet."""

from __future__ import annotations


class progress:  # noqa: N801 - used as a context manager like a function
    """``with progress(enabled, total, "generate", "trajectories") as advance: advance(n)``.

    ``advance(n, info)`` also replaces the text shown after the bar (e.g. the latest loss)."""

    def __init__(self, enabled: bool, total: int, what: str, unit: str):
        self.enabled, self.total, self.what, self.unit = enabled, total, what, unit

    def __enter__(self):
        if not self.enabled:
            return lambda n, info=None: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn(self.what),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(self.unit),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.bar.start()
        task = self.bar.add_task(self.what, total=self.total, info="")

        def advance(n: int, info: str | None = None) -> None:
            if info is None:
                self.bar.advance(task, n)
            else:
                self.bar.update(task, advance=n, info=info)

        return advance

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False


def note(main: bool, text: str) -> None:
    """One line to stderr on the main process: a decision the user should know about (not a progress)."""
    if main:
        import sys

        print(f"prefkit: note: {text}", file=sys.stderr, flush=True)
