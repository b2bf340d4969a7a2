"""PostgreSQL: connection pool, rows, the writer and its journal, extranonce1, resumption, retention, found blocks."""
