"""Where a run's params, metrics, tags and artifacts go: one small logger protocol (start / metrics / finish),
one class per backend, and `Loggers`, which the training loop talks to.

The run directory is one logger among them and always the first: its metrics.jsonl is the source of truth, so
a tracking backend that goes down mid-run costs a warning, not the run. Adding W&B or TensorBoard means one more
class with the same three methods and one line in `Loggers.__init__`.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from .fingerprint import result_fields


class Logger:
    """The protocol: every method is optional."""

    def start(self, run, config: RunConfig, resumed: bool) -> None: ...

    def metrics(self, record: dict) -> None: ...

    def finish(self, run, status: str, tags: dict) -> None: ...


class RunDirectoryLogger(Logger):
    """metrics.jsonl in the run directory, one line per record."""

    def __init__(self, run):
        self.run = run

    def metrics(self, record: dict) -> None:
        self.run.append_metrics(record)


class MlflowLogger(Logger):
    """MLflow through its client API (no global 'active run' state): one MLflow run per leantune run, kept
    across resumes (its id is stored in run.json)."""

    def __init__(self, uri: str, experiment: str, note=print):
        # MLflow's client retries an unreachable server with backoff for minutes by default; a training that
        # cannot track should say so in seconds, and a server that drops out mid-run should not stall steps.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if uri.startswith(("http://", "https://")):
            _probe(uri)
        try:
            from mlflow.tracking import MlflowClient  # optional extra ('tracking'), ~2 s to import
        except ImportError:
            raise ConfigError("tracking.backend=mlflow needs the mlflow package: pip install 'leantune[tracking]'. "
                              "Or set tracking.backend=none.") from None
        self.client = MlflowClient(tracking_uri=uri)
        self.uri, self.experiment, self.note = uri, experiment, note
        self.run_id: str | None = None
        self.failed = False
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        except Exception as e:  # noqa: BLE001 - any connection / server error: say where and stop before training
            raise ConfigError(f"Cannot reach the MLflow tracking server at tracking.uri={uri} ({type(e).__name__}: "
                              f"{str(e)[:200]}). Start it, fix the URI, or set tracking.backend=none.") from None

    def _guard(self, what: str, action) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as e:  # noqa: BLE001 - tracking must never stop a training
            self.failed = True
            self.note(f"[yellow]MLflow: {what} failed ({type(e).__name__}: {str(e)[:160]}); tracking stops for this "
                      f"run, the run directory still has everything[/]")

    def start(self, run, config: RunConfig, resumed: bool) -> None:
        from mlflow.entities import Param

        self.run_id = run.info().get("mlflow_run_id") if resumed else None
        if self.run_id is None:
            created = self.client.create_run(self.experiment_id, run_name=run.id, tags={"leantune.run_dir": str(run.path)})
            self.run_id = created.info.run_id
            run.update_info(mlflow_run_id=self.run_id)
            params = [Param(k, str(v)[:6000]) for k, v in sorted(result_fields(config).items())]
            self._guard("logging params", lambda: self.client.log_batch(self.run_id, params=params))

    def metrics(self, record: dict) -> None:
        from mlflow.entities import Metric

        step, now = int(record.get("step", 0)), int(time.time() * 1000)
        values = [Metric(k, float(v), now, step) for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        self._guard("logging metrics", lambda: self.client.log_batch(self.run_id, metrics=values))

    def finish(self, run, status: str, tags: dict) -> None:
        def upload():
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, str(value))
            if run.report_path.is_file():
                self.client.log_artifact(self.run_id, str(run.report_path))
            for folder in (run.adapter, run.full_model):
                if Path(folder).is_dir():
                    self.client.log_artifacts(self.run_id, str(folder), Path(folder).name)
            self.client.set_terminated(self.run_id, "FINISHED" if status == "completed" else "FAILED")

        self._guard("uploading the report and adapter", upload)


def _probe(uri: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10):
            return
    except urllib.error.HTTPError:
        return  # something answers; MLflow's own calls will tell whether it is an MLflow server
    except OSError as e:
        raise ConfigError(f"Cannot reach the MLflow tracking server at tracking.uri={uri} ({getattr(e, 'reason', e)}). "
                          "Start it, fix the URI, or set tracking.backend=none.") from None


class Loggers:
    """The run directory, then the configured tracking backends (an unreachable one is refused here, before
    any model is loaded)."""

    def __init__(self, config: RunConfig, run, note=print):
        t = config.tracking
        self.items: list[Logger] = [RunDirectoryLogger(run)]
        if t.backend == "mlflow":
            if not t.uri:
                raise ConfigError("tracking.backend=mlflow needs tracking.uri, e.g. http://127.0.0.1:5000 or sqlite:///mlflow.db.")
            self.items.append(MlflowLogger(t.uri, t.experiment, note))

    @classmethod
    def none(cls) -> "Loggers":
        """No logger at all: a training process other than rank 0 (which logs the whole step)."""
        loggers = cls.__new__(cls)
        loggers.items = []
        return loggers

    def start(self, run, config, resumed: bool) -> None:
        for t in self.items:
            t.start(run, config, resumed)

    def metrics(self, record: dict) -> None:
        for t in self.items:
            t.metrics(record)

    def finish(self, run, status: str, tags: dict) -> None:
        for t in self.items:
            t.finish(run, status, tags)
