"""``meshctl``: the command-line client of meshd's REST API.

Modules: ``main`` (argparse and dispatch), ``commands`` (one function per subcommand),
``client`` (HTTP and error translation), ``config`` (server and token resolution),
``sources`` (reading ``-f`` files), ``output`` (tables, YAML, summaries) and ``errors``.
Everything but ``client`` and ``commands`` is pure and testable without sockets.
"""
