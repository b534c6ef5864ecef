"""Small engine plugins that misbehave on purpose, for the mesh's own tests.

Each implements the echo proto service (``revo.echo.v1.EchoService``), so no proto of its
own is needed. Load one without installing it::

    PluginHost(discover=False, extra={"crashy": "tests.plugins.crashy"})

or, for a node, ``[plugins.extra] crashy = "tests.plugins.crashy"``.
"""
