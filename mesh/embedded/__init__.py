"""The embedded mesh: real servers run as local child processes (``revo up``)."""
