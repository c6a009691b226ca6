"""What the server tells its operator: Prometheus metrics (prometheus_client, one registry per server) and the
opt-in request log, one JSONL file per served model, rotated by size (the production sample `leantune drift`
reads)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import threading
import time
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)


class Metrics:
    def __init__(self, queue_depth, loaded_adapters):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("leantune_requests", "Requests answered, by model and outcome", ["model", "status"],
                                registry=r)
        self.prompt_tokens = Counter("leantune_prompt_tokens", "Prompt tokens, by model", ["model"], registry=r)
        self.completion_tokens = Counter("leantune_completion_tokens", "Generated tokens, by model", ["model"], registry=r)
        self.latency = Histogram("leantune_request_latency_seconds", "Time from arrival to the last token", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("leantune_time_to_first_token_seconds", "Time from arrival to the first token",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=r)
        Gauge("leantune_queue_depth", "Requests waiting for a batch", registry=r).set_function(queue_depth)
        Gauge("leantune_loaded_adapters", "Adapters in memory", registry=r).set_function(loaded_adapters)

    def answered(self, model: str, prompt: int, completion: int, latency: float, first_token: float | None) -> None:
        self.requests.labels(model, "ok").inc()
        self.prompt_tokens.labels(model).inc(prompt)
        self.completion_tokens.labels(model).inc(completion)
        self.latency.labels(model).observe(latency)
        if first_token is not None:
            self.first_token.labels(model).observe(first_token)

    def failed(self, model: str, status: int) -> None:
        self.requests.labels(model, str(status)).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)


class RequestLog:
    """`DIR/<model>.jsonl`, rotated at `max_bytes` keeping `backups` older files (logging's RotatingFileHandler)."""

    def __init__(self, folder: str | Path, max_bytes: int = 10 << 20, backups: int = 5):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.backups = max_bytes, backups
        self._loggers: dict[str, logging.Logger] = {}
        self._lock = threading.Lock()

    def path_for(self, model: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", model) + ".jsonl")

    def _logger(self, model: str) -> logging.Logger:
        with self._lock:
            if model not in self._loggers:
                logger = logging.getLogger(f"leantune.serve.requests.{id(self)}.{model}")
                logger.propagate, logger.level = False, logging.INFO
                handler = logging.handlers.RotatingFileHandler(self.path_for(model), maxBytes=self.max_bytes,
                                                               backupCount=self.backups, encoding="utf-8")
                handler.setFormatter(logging.Formatter("%(message)s"))
                logger.addHandler(handler)
                self._loggers[model] = logger
            return self._loggers[model]

    def write(self, model: str, record: dict) -> None:
        self._logger(model).info(json.dumps({"time": time.time(), "model": model, **record}, ensure_ascii=False))

    def close(self) -> None:
        for logger in self._loggers.values():
            for handler in list(logger.handlers):
                handler.close()
                logger.removeHandler(handler)
