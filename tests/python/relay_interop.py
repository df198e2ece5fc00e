"""Interoperability of mcpgw's relay with the official Python MCP SDK (2.x) as the client.

Usage: relay_interop.py URL

Through the gateway (two counter-server upstreams `a` and `b`): the SDK's sampling,
elicitation and roots callbacks answer requests the upstreams send inside their
tools/call streams, and a progress callback and the logging callback receive the
notifications of a call, in order. Prints OK as its last line on success; any failure
raises, so the exit status is non-zero.
"""

import asyncio
import sys

import mcp.types as types
from mcp import Client

ROOT = "file:///srv/relay-interop"
asked = []
logs = []
progress = []


async def sampling(context, params):
    asked.append("sampling")
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text="sampled by python"),
        model="python-test",
    )


async def elicitation(context, params):
    asked.append("elicitation")
    return types.ElicitResult(action="accept", content={"name": "Ada"})


async def roots(context):
    asked.append("roots")
    return types.ListRootsResult(roots=[types.Root(uri=ROOT, name="interop")])


async def on_log(params):
    logs.append(params.data)


async def on_progress(done, total, message):
    progress.append((done, total, message))


async def main(url: str) -> None:
    async with Client(
        url,
        mode="legacy",
        sampling_callback=sampling,
        elicitation_callback=elicitation,
        list_roots_callback=roots,
        logging_callback=on_log,
    ) as client:
        result = await client.call_tool(
            "a__ask",
            {"method": "sampling/createMessage",
             "params": {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
                        "maxTokens": 5}},
        )
        assert not result.is_error, result
        answer = result.structured_content["answer"]
        assert answer["result"]["content"]["text"] == "sampled by python", answer

        result = await client.call_tool(
            "b__ask",
            {"method": "elicitation/create",
             "params": {"message": "name?",
                        "requestedSchema": {"type": "object",
                                            "properties": {"name": {"type": "string"}}}}},
        )
        assert not result.is_error, result
        assert result.structured_content["answer"]["result"]["content"] == {"name": "Ada"}, result

        result = await client.call_tool("a__ask", {"method": "roots/list"})
        assert not result.is_error, result
        assert result.structured_content["answer"]["result"]["roots"][0]["uri"] == ROOT, result
        assert asked == ["sampling", "elicitation", "roots"], asked

        result = await client.call_tool(
            "b__chatty", {"steps": 3, "tag": "py"}, progress_callback=on_progress
        )
        assert not result.is_error, result
        assert [p[0] for p in progress] == [1, 2, 3], progress
        assert [entry["step"] for entry in logs] == [1, 2, 3], logs
    print("OK")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: relay_interop.py URL")
    asyncio.run(main(sys.argv[1]))
