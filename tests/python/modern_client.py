"""The official Python MCP SDK (2.x) as a client of mcpgw in front of an upstream that
speaks only 2026-07-28 (the `modern-server` test upstream).

Usage: modern_client.py URL

The client runs in its default mode (`auto`: it probes server/discover and must settle on
2026-07-28 through the gateway). Then: tools/list (the modern server's tools), tools/call
add (its sum) and echo_meta (what the upstream read in the request's `_meta`: this
client's own name and 2026-07-28, which the gateway must have passed on). Prints OK as
its last line on success; any failure raises, so the exit status is non-zero.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.types import Implementation

CLIENT_NAME = "mcpgw-python-modern"


async def main(url: str) -> None:
    # No `mode=`: the client's default is under test.
    async with Client(url, client_info=Implementation(name=CLIENT_NAME, version="0.0.1")) as client:
        print("protocol version:", client.protocol_version)
        assert client.protocol_version == "2026-07-28", client.protocol_version
        info = client.server_info
        print("server info:", info)
        assert info is not None and info.name == "modern", info

        tools = await client.list_tools()
        names = sorted(tool.name for tool in tools.tools)
        print("tools:", names)
        assert "add" in names and "echo_meta" in names, names

        result = await client.call_tool("add", {"a": 2, "b": 40})
        assert not result.is_error, result
        assert result.content[0].text == "42", result

        result = await client.call_tool("echo_meta", {})
        assert not result.is_error, result
        seen = json.loads(result.content[0].text)
        print("the upstream saw:", seen)
        assert seen["clientInfo"] == CLIENT_NAME, seen
        assert seen["protocolVersion"] == "2026-07-28", seen

    print("OK")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: modern_client.py URL")
    asyncio.run(main(sys.argv[1]))
