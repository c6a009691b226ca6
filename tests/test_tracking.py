"""MLflow tracking against a real MLflow server started here on 127.0.0.1 (SQLite backend), not a mock."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import tiny_overrides
from leantune.errors import ConfigError
from leantune import train

mlflow = pytest.importorskip("mlflow", reason="the optional 'tracking' extra (mlflow) is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "artifacts"),
               "--workers", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def test_params_metrics_tags_report_and_adapter_reach_mlflow(tiny_model_dir, chat_file, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    values = {"training.max_steps": 4, "training.eval_every": 2, "tracking.backend": "mlflow",
              "tracking.uri": mlflow_server, "tracking.experiment": "leantune-test", "cost.usd_per_hour": 2.5}
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **values))
    run_id = json.loads((result.run_dir / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    assert run.data.params["training.max_steps"] == "4" and run.data.params["method.name"] == "lora"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run_id, "eval_loss")) >= 2
    assert float(run.data.tags["cost_usd"]) == pytest.approx(result.cost_usd) and run.data.tags["device"] == "cpu"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.md", "adapter"} <= artifacts
    assert "adapter/adapter_config.json" in {a.path for a in client.list_artifacts(run_id, "adapter")}


def test_an_unreachable_tracking_server_stops_the_run_before_the_model_loads(tiny_model_dir, chat_file, tmp_path):
    values = {"tracking.backend": "mlflow", "tracking.uri": f"http://127.0.0.1:{free_port()}"}
    started = time.time()
    with pytest.raises(ConfigError, match="Cannot reach the MLflow tracking server"):
        train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path, **values))
    assert time.time() - started < 120
