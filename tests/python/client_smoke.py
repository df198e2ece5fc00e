"""Smoke test of mcpgw with the official Python MCP SDK (2.x) as the client.

Usage: client_smoke.py URL

Drives one session through the gateway: connect (the SDK probes server/discover and
falls back to initialize), tools/list, tools/call increment, prompts/get greeting,
resources/read counter://value. Prints OK as its last line on success; any failure
raises, so the exit status is non-zero.
"""

import asyncio
import sys

from mcp import Client


async def main(url: str) -> None:
    async with Client(url) as client:
        print("protocol version:", client.protocol_version)

        tools = await client.list_tools()
        names = sorted(tool.name for tool in tools.tools)
        print("tools:", names)
        assert "increment" in names and "get_count" in names, names

        result = await client.call_tool("increment", {})
        assert not result.is_error, result
        assert result.structured_content == {"count": 1}, result
        assert result.content[0].text == "1", result

        prompt = await client.get_prompt("greeting", {"name": "smoke"})
        text = prompt.messages[0].content.text
        assert text == "Hello, smoke from counter", text

        resource = await client.read_resource("counter://value")
        assert resource.contents[0].text == "1", resource

    print("OK")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: client_smoke.py URL")
    asyncio.run(main(sys.argv[1]))
