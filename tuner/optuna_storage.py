"""``--optuna-storage [URL]``: the search's Optuna study kept in a database, for ``optuna-dashboard`` and ``optuna.load_study``.

Ray's ``OptunaSearch`` keeps its study in the driver's memory. Given a storage, it keeps it there instead
(``OptunaSearch(storage=..., study_name=...)``, Ray's public arguments), under the experiment's name:
the trials appear as Optuna proposes them, each with its searched values, its state (COMPLETE for a
trial that ran its budget, PRUNED for one stopped early: `tuner.searchers`) and its metric as
intermediate values against the images it had seen, every `INTERMEDIATE_EVERY_STEPS` optimizer steps
of the base config (each value is a database write in the driver), so the dashboard draws the curves.

- No URL: ``sqlite:///<experiment folder>/optuna.db``. SQLite is what ``optuna-dashboard`` and
  ``optuna.load_study`` open from a URL alone, with nothing to install; one process writes it (the
  driver), so SQLite's locking suffices, the dashboard reading beside it.
- A URL: any RDB URL Optuna accepts (``sqlite:///path``, ``postgresql://user@host/db``,
  ``mysql+pymysql://...``): a database server lets several machines share it.
- ``--resume``: Ray restores the searcher with its study and storage; the same study goes on.

Everything is checked before Ray starts without writing anything: the URL parses, its driver imports,
the database answers (a SQLite file not yet there is left uncreated), and it holds no study of that
name already. No Ray.
"""

from __future__ import annotations

import shlex
import sqlite3
from pathlib import Path
from typing import Any

from reid_core.errors import UserError
from tuner.storage import Location

DEFAULT_FILE = "optuna.db"  # in the experiment folder, with no URL
INTERMEDIATE_EVERY_STEPS = 10  # base-config optimizer steps between two intermediate values of a trial
STUDIES_TABLE = "studies"  # Optuna's RDB schema (optuna/storages/_rdb/models.py: StudyModel), read to find a name taken


def storage_url(given: str, exp_path: Location) -> str:
    """The storage's URL: ``given`` (a SQLite file's path made absolute: the driver of a ``--resume`` may start
    elsewhere), or for ``--optuna-storage`` with no value the file in the experiment folder."""
    if given:
        return _absolute_sqlite(given)
    if not isinstance(exp_path, Path):
        raise UserError(
            f"--optuna-storage with no URL keeps the study in the experiment folder, which on '{exp_path.parent}' cannot "
            "hold a database; pass a database URL every node reaches, e.g. --optuna-storage postgresql://user@host/db"
        )
    return f"sqlite:///{exp_path / DEFAULT_FILE}"


def _absolute_sqlite(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL: check_storage says so
        return url
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return url
    if Path(database).expanduser().is_absolute() and not database.startswith("~"):
        return url
    return parsed.set(database=str(Path(database).expanduser().resolve())).render_as_string(hide_password=False)


def shown(url: str) -> str:
    """The URL with its password hidden: what is printed and kept in reid_tune.json."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: nothing to hide
        return url


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {shlex.quote(shown(url))}"


def check_storage(url: str, study_name: str, *, in_experiment: bool = False) -> None:
    """One line naming the problem if ``url`` cannot hold the study ``study_name``; writes nothing.

    ``in_experiment``: the default file, in an experiment folder that is created later.
    """
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.engine import make_url

    flag = f"--optuna-storage '{shown(url)}'"
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except Exception as err:  # ArgumentError (no URL), NoSuchModuleError (no such database), ValueError
        raise UserError(
            f"{flag} is not a database URL Optuna accepts ({_first(err)}); pass e.g. sqlite:///path/optuna.db or "
            "postgresql://user@host/db, or no value for a file in the experiment folder"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        names = _sqlite_study_names(flag, parsed.database, in_experiment)
    else:
        try:
            engine = create_engine(parsed)  # imports the database's driver
        except ImportError as err:
            raise UserError(f"{flag}: the database driver is not installed ({_first(err)}); pip install it") from None
        try:
            with engine.connect() as connection:
                tables = inspect(connection).get_table_names()
                names = {r[0] for r in connection.execute(text(f"SELECT study_name FROM {STUDIES_TABLE}"))} if STUDIES_TABLE in tables else set()
        except Exception as err:  # OperationalError and kin: refused, unknown host, bad password
            raise UserError(f"{flag}: cannot reach the database ({_first(err)}); check the URL and that the server runs") from None
        finally:
            engine.dispose()
    if study_name in names:
        raise UserError(
            f"{flag} already holds a study named '{study_name}'; pass a new --name, or delete that study: "
            f"optuna delete-study --study-name {study_name} --storage {shlex.quote(shown(url))}"
        )


def _sqlite_study_names(flag: str, database: Any, in_experiment: bool) -> set[str]:
    """The study names in a SQLite file, read without creating the file or writing to it."""
    if not database or database == ":memory:" or str(database).startswith("file:"):
        raise UserError(f"{flag}: an in-memory SQLite database ends with the search; pass a file, e.g. sqlite:///optuna.db")
    path = Path(database).expanduser()
    if not path.exists():
        if not in_experiment and not path.parent.is_dir():
            raise UserError(f"{flag}: folder '{path.parent}' does not exist; create it or pass another path")
        return set()
    if path.is_dir():
        raise UserError(f"{flag}: '{path}' is a folder; pass a file path, e.g. sqlite:///{path}/optuna.db")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:  # read-only: nothing written
            tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if STUDIES_TABLE not in tables:
                return set()
            return {r[0] for r in connection.execute(f"SELECT study_name FROM {STUDIES_TABLE}")}
    except sqlite3.Error as err:
        raise UserError(f"{flag}: '{path}' is not a SQLite database Optuna can use ({_first(err)}); pass another file") from None


def open_storage(url: str) -> Any:
    """The storage the search's study lives in (creates the SQLite file and Optuna's tables where missing)."""
    import optuna

    return optuna.storages.RDBStorage(url)


def _first(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
