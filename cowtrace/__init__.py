"""cowtrace: live copy-on-write tracing of a process family after fork()."""

__version__ = "0.1.0"
