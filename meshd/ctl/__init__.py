"""``meshctl``: the command-line client of meshd's REST API.

Modules: ``main`` (argparse and dispatch), ``commands`` (one function per subcommand),
``client`` (HTTP and error translation), ``config`` (server, token and CA resolution),
``trust`` (verifying meshd's certificate: CA file, data dir, pinned bundle, trust on first
use), ``sources`` (reading ``-f`` files), ``output`` (tables, YAML, summaries) and
``errors``. Everything but ``client`` and ``commands`` is pure and testable without sockets
(``trust`` and ``config`` read and write only small files).
"""
