"""Service discovery behind one async interface (anyio: runs under Trio and asyncio)."""
