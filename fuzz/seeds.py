# Writes the hand-made seed inputs of fuzz/corpus/<target>/ (real requests,
# answers, chunked bodies, SSE streams, JSON-RPC messages). Run once as
# `python3 fuzz/seeds.py fuzz`; the corpora in the repository are these seeds
# plus what the long runs found, minimised (see scripts/fuzz.sh).
import os, sys
root = sys.argv[1]
def put(target, name, data):
    d = os.path.join(root, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    open(os.path.join(d, name), "wb").write(data)

SID = "abcdefghijklmnopqrstuvwxyz"
init = '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}'
call = '{"jsonrpc":"2.0","id":"a-7","method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},"_meta":{"progressToken":5}}}'
batch = '[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":2,"result":{}}]'
def post(body, extra=""):
    return f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n{extra}Content-Length: {len(body.encode())}\r\n\r\n{body}"
reqs = {
 "post_initialize": post(init),
 "post_call_session": post(call, f"Mcp-Session-Id: {SID}\r\n"),
 "get_stream": f"GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nMcp-Session-Id: {SID}\r\nLast-Event-ID: 42\r\n\r\n",
 "delete": f"DELETE /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {SID}\r\n\r\n",
 "chunked_post": "POST /mcp HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5;x=1\r\n{\"a\":\r\n3\r\n1}\n\r\n0\r\nTrailer: t\r\n\r\n",
 "http10_keepalive": "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
 "head": "HEAD /mcp HTTP/1.1\r\nHost: a\r\n\r\n",
 "smuggle": "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
 "stateless": post('{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}', "Mcp-Method: server/discover\r\n").replace("2025-06-18","2026-07-28"),
 "bearer": post('{"jsonrpc":"2.0","id":1,"method":"ping"}', "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln\r\nOrigin: http://localhost\r\n"),
}
for k, v in reqs.items():
    put("request_head", k, v)
    put("peek", k, v)
    put("http_server", k, b"\x00" + v.encode())
    put("http_server", k + "_bytewise", b"\x01" + v.encode())
put("http_server", "pipelined", b"\x07" + (reqs["post_initialize"] + reqs["get_stream"] + reqs["chunked_post"] + reqs["delete"]).encode())
put("http_server", "too_large", b"\x00" + b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n" + b"x" * 100)
put("peek", "two_session_ids", f"GET / HTTP/1.1\r\nmcp-session-id:  {SID} \r\nMcp-Session-Id: bbbbbbbbbbbbbbbbbbbbbbbbbb\r\n\r\n")
put("peek", "minted_raw", bytes(range(16)) + b"\x04\x00\x01\x02\x03\x05")

chunks = {
 "simple": b"\x00" + b"5\r\nhello\r\n0\r\n\r\n",
 "ext_trailer": b"\x03" + b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT",
 "bare_lf": b"\x01" + b"2\nhi\n0\n\n",
 "sse_in_chunks": b"\x10" + b"1b\r\nevent: message\ndata: {\"a\":1}\n\n\r\n0\r\n\r\n",
}
for k, v in chunks.items(): put("chunked", k, v)

answers = {
 "json": "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
 "sse_chunked": "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n2f\r\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1}\n\n\r\n0\r\n\r\n",
 "continue": "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
 "no_content": "HTTP/1.1 204 No Content\r\n\r\n",
 "until_close": "HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n",
 "session": f"HTTP/1.1 200 OK\r\nMcp-Session-Id: {SID}\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{{}}",
 "stray_after": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n",
 "both_framings": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}
for k, v in answers.items():
    put("upstream_answer", k, b"\x00\x00" + v.encode())
    put("upstream_answer", k + "_bytewise_whole", b"\x01\x01" + v.encode())

sse = {
 "messages": "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
 "priming": "id: 17\nretry: 3000\ndata:\n\n: comment\r\nid: 18\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n",
 "endpoint": "\xef\xbb\xbfevent: endpoint\ndata: /messages?sessionId=abc\n\n",
 "cr_only": "data: a\rdata: b\r\r",
}
for k, v in sse.items():
    put("sse", k, b"\x00" + v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v)
    put("sse", k + "_small", b"\x42" + v.encode())

js = {
 "initialize": init, "call": call, "batch": batch,
 "result": '{"jsonrpc":"2.0","id":"a-7","result":{"content":[{"type":"text","text":"x\\"y"}],"isError":true}}',
 "error": '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request"}}',
 "notification": '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}',
 "rewrite": '{"capabilities":{"roots":{}},"clientInfo":{"name":"x","version":"1"}}\n' + call,
 "member": 'progressToken\n{"progressToken":1,"_meta":{}}',
 "escaped_key": '{"i\\u0064":1,"result":{}}',
}
for k, v in js.items(): put("jsonrpc", k, v)
