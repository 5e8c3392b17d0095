"""`evstore bench`: the single-node append/read benchmark against eventsourcing's SQLite recorder
(append) and the single node vs cluster benchmark with failover times (cluster)."""
