"""Matplotlib figures written as PNG files, for the report's sections: no window, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

from rlhf.io import atomic_writer


def figure(rows: int = 1, columns: int = 1, size=(6.4, 4.0)):
    """(figure, axes) with `axes[row][column]` whatever the grid's shape."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    new_figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    return new_figure, axes


def save_png(new_figure, path: Path) -> Path:
    """The figure as a PNG at `path` (atomically), then closed."""
    import matplotlib.pyplot as plt

    new_figure.tight_layout()
    buffer = io.BytesIO()
    new_figure.savefig(buffer, format="png", dpi=110)
    plt.close(new_figure)
    with atomic_writer(path, "wb") as file:
        file.write(buffer.getvalue())
    return path
