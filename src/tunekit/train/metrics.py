"""Where training metrics go: always metrics.jsonl; TensorBoard and MLflow when the config asks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunekit.errors import UserError


class MetricsLogger:
    def __init__(self, run_dir: Path, *, tensorboard: bool = False, mlflow_uri: str | None = None,
                 run_name: str = "tunekit", params: dict[str, Any] | None = None):
        self.path = run_dir / "metrics.jsonl"
        self._fh = self.path.open("a", encoding="utf-8")
        self._tb = _tensorboard_writer(run_dir / "tensorboard") if tensorboard else None
        self._mlflow = _start_mlflow(mlflow_uri, run_name, params or {}) if mlflow_uri else None

    def log(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        step = int(record.get("step", 0))
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(numbers, step=step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "training.tensorboard is on but tensorboard is not installed", fix="pip install tensorboard"
        ) from None
    return SummaryWriter(str(folder))


def _start_mlflow(uri: str, run_name: str, params: dict[str, Any]) -> Any:
    try:
        import mlflow
    except ImportError:
        raise UserError("training.mlflow_uri is set but mlflow is not installed", fix="pip install mlflow") from None
    mlflow.set_tracking_uri(uri)
    mlflow.start_run(run_name=run_name)
    mlflow.log_params({k: str(v)[:250] for k, v in params.items()})
    return mlflow


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curve(metrics_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
