"""A stateful MCP server on stdio, built with the official Python SDK (2.x): the upstream
of the gateway's stdio transport tests. With `--sse PORT` it serves the deprecated
HTTP+SSE transport on 127.0.0.1:PORT instead (`/sse`, messages to `/messages/`), for the
legacy transport tests; then all its sessions share the one counter of the process.

Each process holds one counter, so two sessions that share a process would see each
other's counts. Tools: `increment` and `get_count` (the count as text), `pid` (this
process's pid), `crash` (exits at once, status 3, without answering). It writes one line
to stderr at start, which the gateway logs with the upstream id.
"""

import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("stdio-counter")
count = 0


@server.tool()
def increment() -> str:
    """Add one to this process's counter; returns the new value."""
    global count
    count += 1
    return str(count)


@server.tool()
def get_count() -> str:
    """This process's counter."""
    return str(count)


@server.tool()
def pid() -> str:
    """The pid of this server process."""
    return str(os.getpid())


@server.tool()
def crash() -> str:
    """Exit at once without answering."""
    sys.stderr.flush()
    os._exit(3)


if __name__ == "__main__":
    print(f"stdio-counter started, pid {os.getpid()}", file=sys.stderr, flush=True)
    if len(sys.argv) == 3 and sys.argv[1] == "--sse":
        server.run("sse", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
