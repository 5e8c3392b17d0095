"""Builders of the writer's multi-row statements: a few shapes per kind, so that all stay prepared in sqlite3's
statement cache."""
from __future__ import annotations

import functools
from typing import Iterable

from .records import ROW_WIDTH, STORED_COLUMNS

SQL_VARIABLE_CHUNK = 500
STREAM_COLUMNS = "stream, version, created, updated, deleted, metadata"
MAX_ROWS_PER_STATEMENT = 512
SELECT_SIZES = (1, 4, 16, 64, 256, MAX_ROWS_PER_STATEMENT)


def value_rows(rows: int, columns: int) -> str:
    return ",".join(["(" + ",".join("?" * columns) + ")"] * rows)


@functools.cache
def insert_sql(rows: int) -> str:
    """One multi-row INSERT per row count (SQLite's statement cache keeps them prepared)."""
    return f"INSERT INTO events ({STORED_COLUMNS}) VALUES {value_rows(rows, ROW_WIDTH)}"


def row_chunks(count: int) -> Iterable[tuple[int, int]]:
    """(offset, rows) pieces of `count` rows: whole MAX_ROWS_PER_STATEMENT pieces, then the binary digits of the
    rest. Ten statement shapes cover every count, so they all stay prepared in the statement cache."""
    offset = 0
    while count - offset >= MAX_ROWS_PER_STATEMENT:
        yield offset, MAX_ROWS_PER_STATEMENT
        offset += MAX_ROWS_PER_STATEMENT
    size = MAX_ROWS_PER_STATEMENT // 2
    while offset < count:
        if count - offset >= size:
            yield offset, size
            offset += size
        size //= 2


@functools.cache
def stream_upsert_sql(rows: int) -> str:
    return f"INSERT OR REPLACE INTO streams ({STREAM_COLUMNS}) VALUES {value_rows(rows, 6)}"


@functools.cache
def stream_select_sql(names: int) -> str:
    return f"SELECT {STREAM_COLUMNS} FROM streams WHERE stream IN ({','.join('?' * names)})"
