"""The usage ledger: every proxied call's usage record, written durably and exactly once.

- `record`: what a call writes (the row, its serving cost and spend stamped);
- `writer`: group commit on the proxy's event loop (`LedgerWriter`, the write API);
- `postgres`: the PostgreSQL batch path (one statement per batch);
- `orm`: the ORM path (embedded SQLite, and spool replay on PostgreSQL too);
- `rollups`: how records fold into hourly rollups (the one home of that rule);
- `spool`: where batches go while the database is unreachable, and their replay;
- `partitions`: the monthly partitions of the PostgreSQL ledger (made ahead, restored,
  detached and dropped: the only path that removes records).
- `archive`: whole months exported to Parquet, verified against the database and the
  rollups, dropped, restored (retention; `archive_store`: a directory or S3 bucket).

Records are unique per `request_id` (on the partitioned PostgreSQL ledger through a
request id that encodes `started_at`: `record.request_id_for`) and immutable once stored
(database triggers);
rollups carry a commit-order stamp billing uses to find late usage
(`metering.selectors.usage_watermark`). Outside this package, callers use only the
names below; tests and management commands may import the modules directly.
"""

from metering.ledger.spool import SpoolPending, spool_guard
from metering.ledger.writer import LedgerWriter

__all__ = ["LedgerWriter", "SpoolPending", "spool_guard"]
