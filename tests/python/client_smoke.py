"""Smoke test of mcpgw with the official Python MCP SDK (2.x) as the client.

Usage: client_smoke.py URL MODE

MODE is the client's own `mode`: "auto" (its default: it probes server/discover and, as
the gateway serves the stateless protocol, must settle on 2026-07-28) or "legacy" (the
initialize handshake and one session). Then: tools/list, tools/call increment, prompts/get
greeting, resources/read counter://value. A stateless client has no session, so each of
its requests reaches the stateful counter through upstream sessions of its own: the count
it reads starts from zero every time. Prints OK as its last line on success; any failure
raises, so the exit status is non-zero.

With MCPGW_BEARER_TOKEN in the environment, every request carries
`Authorization: Bearer <it>` (a gateway with [auth]).
"""

import asyncio
import os
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
# The SDK's own client factory (its default timeouts), as streamable_http_client
# documents for adding headers; pinned with the SDK (mcp==2.3.0).
from mcp.shared._httpx_utils import create_mcp_http_client


def server(url: str):
    token = os.environ.get("MCPGW_BEARER_TOKEN")
    if not token:
        return url
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    return streamable_http_client(url, http_client=http)


async def main(url: str, mode: str) -> None:
    async with Client(server(url), mode=mode) as client:
        print("protocol version:", client.protocol_version)
        stateless = mode == "auto"
        expected_version = "2026-07-28" if stateless else None
        if expected_version:
            assert client.protocol_version == expected_version, client.protocol_version

        tools = await client.list_tools()
        names = sorted(tool.name for tool in tools.tools)
        print("tools:", names)
        assert "increment" in names and "get_count" in names, names

        for expected in ([1, 1] if stateless else [1, 2]):
            result = await client.call_tool("increment", {})
            assert not result.is_error, result
            assert result.structured_content == {"count": expected}, result
            assert result.content[0].text == str(expected), result

        prompt = await client.get_prompt("greeting", {"name": "smoke"})
        text = prompt.messages[0].content.text
        assert text == "Hello, smoke from counter", text

        resource = await client.read_resource("counter://value")
        expected = "0" if stateless else "2"
        assert resource.contents[0].text == expected, resource

    print("OK")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("auto", "legacy"):
        sys.exit("usage: client_smoke.py URL auto|legacy")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
