"""The learning-curve record of a training run: one dict per epoch (chapter 4).

:class:`History` is what the training engine (:mod:`anibook_utils.training`), the TorchANI
example's loop (:mod:`anibook_utils.torchani_example`), the experiment tables
(:mod:`anibook_utils.experiments`) and the retraining panel (:mod:`anibook_utils.widgets`)
share: per-epoch records with RMSE and MAE in kcal/mol, a table and a plot.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

__all__ = ["History"]


class History:
    """Per-epoch records: ``epoch``, ``train_rmse``, ``train_mae``, ``val_rmse``, ``val_mae``
    (kcal/mol), ``loss`` (mean training loss), ``lr``, ``time`` (training seconds so far) and
    ``epoch_time``."""

    def __init__(self, records: list[dict[str, Any]] | None = None) -> None:
        self.records: list[dict[str, Any]] = [dict(r) for r in records or []]

    def append(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def column(self, name: str) -> list[Any]:
        """One field over the epochs, e.g. ``history.column("val_rmse")``."""
        return [r[name] for r in self.records]

    def best(self, metric: str = "val_rmse") -> dict[str, Any] | None:
        """The record with the lowest ``metric`` (None if empty)."""
        return min(self.records, key=lambda r: r[metric]) if self.records else None

    def first_reaching(self, value: float, metric: str = "val_rmse") -> dict[str, Any] | None:
        """The first record whose ``metric`` is at most ``value`` (None if never)."""
        return next((r for r in self.records if r[metric] <= value), None)

    def to_list(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.records]

    def to_frame(self):
        """The records as a pandas DataFrame indexed by epoch."""
        import pandas as pd

        frame = pd.DataFrame(self.records)
        return frame.set_index("epoch") if "epoch" in frame else frame

    def plot(self, ax=None, metric: str = "rmse", log: bool = True, x: str = "epoch", title: str | None = None,
             label: str | None = None, mark_best: bool = True):
        """Learning curves (training and validation ``metric``, kcal/mol); returns the Figure.

        ``x`` is ``"epoch"`` or ``"time"`` (training seconds); pass ``ax`` and ``label`` to
        draw several runs on one plot.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 3.6))
        else:
            fig = ax.figure
        prefix = f"{label}: " if label else ""
        if self.records:
            xs = self.column(x)
            line = ax.plot(xs, self.column(f"val_{metric}"), "-", label=f"{prefix}validation")[0]
            ax.plot(xs, self.column(f"train_{metric}"), "--", color=line.get_color() if label else None,
                    alpha=0.8, label=f"{prefix}training")
            best = self.best(f"val_{metric}")
            if mark_best:
                ax.plot([best[x]], [best[f"val_{metric}"]], "o", color=line.get_color(),
                        label=f"{prefix}best {best[f'val_{metric}']:.3g} kcal/mol")
        if log:
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
        ax.set_xlabel({"epoch": "epoch", "time": "training time (s)"}.get(x, x))
        ax.set_ylabel(f"energy {metric.upper()} (kcal/mol)")
        if title:
            ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        if not self.records:
            return "History(empty)"
        last = self.records[-1]
        return (f"History({len(self)} epochs, last val RMSE {last['val_rmse']:.3f} kcal/mol, "
                f"best {self.best()['val_rmse']:.3f})")


def plain_log_ticks(axis) -> None:
    """Label a log-scaled matplotlib ``axis`` with plain numbers (0.5, 1, 2, 10) instead of
    matplotlib's default powers (5×10⁻¹): kcal/mol read more easily so."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        """matplotlib's choice of which ticks to label, written as plain numbers."""

        def __call__(self, x: float, pos=None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
