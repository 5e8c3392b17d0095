"""The local log on disk: SQLite in WAL mode, one writer thread doing group commit, reader threads.

Every record carries a CRC32C over its bytes, checked whenever it is read as a record and by `verify`; each row
also holds the event's reply JSON (node/replyjson.py) with a CRC32C of its own, checked on every read that returns
it. One module per job:

- records: the record format, its checksum, and the stored row the writer inserts and replication ships
- schema: tables, indexes, format versions and their migration on open, the full scan of `verify`
- statements: the writer's multi-row statement builders
- txn: the write transaction a write operation runs in (WriteTxn)
- ids: the event-id index (the writer's in-memory window of the newest random ids, written into sorted runs
  merged four at a time; UUIDv7 ids in `event_ids`)
- idfilter: the Bloom filter of the log's random ids that spares fresh ones a probe of that index
- recent: the latest group commits kept in memory for replication
- wal: how connections are opened, and the checkpoint that bounds the WAL
- threads: the Storage object and its writer, reader, syncer and checkpointer threads
- reads: the read queries that return pages ($all through the type/category indexes, stream pages, listings,
  snapshots), and the page of stored reply texts verified as it is read (render_rows)
- streams: typed queries of one stream's state, the settings, and the rows maintenance starts from

The layers above use the names exported here.
"""
from ..replyjson import DATA_BINARY, METADATA_BINARY
from . import streams
from .reads import (MAX_REPLY_BYTES, AllFilter, Page, RenderedEvent, Take, page_taker, read_all, render_rows,
                    rendered_json, rendered_position, rendered_size, rendered_version, snapshot_record_at_or_below,
                    snapshot_records_between, snapshot_window_start, stream_name_ranges, stream_page, stream_rows)
from .recent import RecentCommits, rows_from_store
from .records import (STORED_COLUMNS, Record, ScavengedRecord, StreamRow, payload_checksum, record_from_row,
                      records_of_rows, row_accounts, row_count, row_record, rows_of_records, seal_payloads,
                      stored_row, verify_rows)
from .schema import (CATEGORY_SQL, DATA_SQL, DB_FILE, FORMAT_VERSION, METADATA_SQL, RECORD_COLUMNS, REPLY_COLUMNS,
                     checked_batches)
from .threads import Storage, now_micros
from .txn import FlushFailed, WriteTxn, removal_count
from .wal import WRITER_CACHE_KIB, connect

__all__ = ["MAX_REPLY_BYTES", "AllFilter", "Page", "RenderedEvent", "Take", "page_taker", "read_all", "render_rows",
           "rendered_json", "rendered_position", "rendered_size", "rendered_version", "snapshot_record_at_or_below",
           "snapshot_records_between", "snapshot_window_start", "stream_name_ranges", "stream_page", "stream_rows",
           "streams",
           "CATEGORY_SQL", "DATA_BINARY", "DATA_SQL", "DB_FILE", "FORMAT_VERSION", "METADATA_BINARY", "METADATA_SQL",
           "RECORD_COLUMNS", "REPLY_COLUMNS", "STORED_COLUMNS", "WRITER_CACHE_KIB", "FlushFailed", "Record",
           "RecentCommits", "ScavengedRecord", "Storage", "StreamRow", "WriteTxn", "checked_batches", "connect",
           "now_micros", "payload_checksum", "record_from_row", "records_of_rows", "removal_count", "row_accounts",
           "row_count", "row_record", "rows_from_store", "rows_of_records", "seal_payloads", "stored_row",
           "verify_rows"]
