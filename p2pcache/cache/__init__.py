"""The local content store: chunked zstd NARs on disk and their SQLite index."""
