"""Run directories: the unit of storage (config, metrics, checkpoints, adapter, report)."""

from .rundir import RunDir, create_run_dir, open_run_dir

__all__ = ["RunDir", "create_run_dir", "open_run_dir"]
