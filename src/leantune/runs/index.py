"""The runs index: one SQLite database per runs root (`index.sqlite`), so `runs ls`, duplicate detection, the
cost ledger and the registry answer without opening every run directory.

The run directories stay the source of truth: the index is rebuilt from them by `leantune runs reindex`, and a
run updates its own row whenever its status changes. SQLite in WAL mode with a busy timeout lets several
trainings write and `runs ls` read at the same time; every write is one short transaction.
"""

from __future__ import annotations

import difflib
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from ..errors import RunDirError

INDEX_NAME = "index.sqlite"
COLUMNS = (
    "id", "path", "name", "project", "status", "method", "objective", "base", "data", "steps", "total_steps",
    "final_loss", "eval_loss", "best_eval_loss", "tokens", "wall_s", "device", "gpu_hours", "usd_per_hour",
    "cost_usd", "usd_per_m_tokens", "peak_memory_mb", "planned_memory_gib", "started", "finished", "resumes",
    "config_fp", "data_fp", "model_fp", "fields", "parent", "alerts",
)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs ({", ".join(c + (" TEXT PRIMARY KEY" if c == "id" else "") for c in COLUMNS)});
CREATE INDEX IF NOT EXISTS runs_fp ON runs (config_fp, data_fp, model_fp);
CREATE TABLE IF NOT EXISTS registry (
    name TEXT, version INTEGER, stage TEXT, run_id TEXT, path TEXT, metrics TEXT, cost_usd REAL, created REAL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS budgets (project TEXT PRIMARY KEY, usd REAL, alerted_pct INTEGER);
"""
INSERT_RUN = f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class RunIndex:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / INDEX_NAME

    @contextmanager
    def connect(self, write: bool = False):
        self.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit; transactions by hand
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("PRAGMA journal_mode = WAL")
            have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
            for column in COLUMNS if have else ():  # an index written by an older leantune gains the newer columns
                if column not in have:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column}")
            db.executescript(SCHEMA)  # CREATE ... IF NOT EXISTS: cheap, and a fresh root needs it
            if write:
                db.execute("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlock between writers
            yield db
            if write:
                db.execute("COMMIT")
        except BaseException:
            if write and db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # ---------------------------------------------------------------- runs
    def upsert(self, row: dict) -> None:
        values = [row.get(c) for c in COLUMNS]
        with self.connect(write=True) as db:
            db.execute(INSERT_RUN, values)

    def runs(self, project: str | None = None) -> list[dict]:
        with self.connect() as db:
            query, args = "SELECT * FROM runs", ()
            if project:
                query, args = query + " WHERE project = ?", (project,)
            return [dict(r) for r in db.execute(query + " ORDER BY started", args)]

    def find(self, ref: str) -> dict:
        """A run by id, unique id prefix, name, or directory path."""
        path = Path(ref)
        runs = self.runs()
        if path.is_dir() and (path / "config.yaml").is_file():
            for r in runs:
                if Path(r["path"]).resolve() == path.resolve():
                    return r
        exact = [r for r in runs if r["id"] == ref]
        if exact:
            return exact[0]
        partial = [r for r in runs if r["id"].startswith(ref) or r["name"] == ref]
        if len(partial) == 1:
            return partial[0]
        if len(partial) > 1:
            raise RunDirError(f"'{ref}' matches {len(partial)} runs ({', '.join(r['id'] for r in partial[:5])}); give more of the id.")
        close = difflib.get_close_matches(ref, [r["id"] for r in runs] + [r["name"] for r in runs], n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else " `leantune runs ls` lists them."
        raise RunDirError(f"No run '{ref}' in {self.root}.{hint}")

    def completed_with(self, config_fp: str, data_fp: str, model_fp: str) -> list[dict]:
        with self.connect() as db:
            return [dict(r) for r in db.execute(
                "SELECT * FROM runs WHERE status = 'completed' AND config_fp = ? AND data_fp = ? AND model_fp = ? "
                "ORDER BY started", (config_fp, data_fp, model_fp))]

    def completed_on(self, data_fp: str, model_fp: str) -> list[dict]:
        with self.connect() as db:
            return [dict(r) for r in db.execute(
                "SELECT * FROM runs WHERE status = 'completed' AND data_fp = ? AND model_fp = ?", (data_fp, model_fp))]

    def spent(self, project: str) -> float:
        with self.connect() as db:
            value = db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM runs WHERE project = ?", (project,)).fetchone()[0]
        return float(value)

    def reindex(self, run_dirs: list[Path], row_for) -> list[str]:
        """Rebuild the runs table from the directories; returns a problem per directory that could not be read
        (the others are indexed all the same)."""
        problems, rows = [], []
        for d in run_dirs:
            try:
                rows.append(row_for(d))
            except RunDirError as e:
                problems.append(str(e))
        with self.connect(write=True) as db:
            db.execute("DELETE FROM runs")
            for row in rows:
                db.execute(INSERT_RUN,
                           [row.get(c) for c in COLUMNS])
        return problems

    # ---------------------------------------------------------------- budgets
    def budget(self, project: str) -> tuple[float | None, int]:
        with self.connect() as db:
            row = db.execute("SELECT usd, alerted_pct FROM budgets WHERE project = ?", (project,)).fetchone()
        return (row["usd"], row["alerted_pct"] or 0) if row else (None, 0)

    def budgeted_projects(self) -> set[str]:
        with self.connect() as db:
            return {r[0] for r in db.execute("SELECT project FROM budgets")}

    def set_budget(self, project: str, usd: float) -> None:
        with self.connect(write=True) as db:
            db.execute("INSERT OR REPLACE INTO budgets (project, usd, alerted_pct) VALUES (?, ?, 0)", (project, usd))

    def mark_alerted(self, project: str, pct: int) -> None:
        with self.connect(write=True) as db:
            db.execute("UPDATE budgets SET alerted_pct = ? WHERE project = ?", (pct, project))
