"""One TLS receive buffer per event loop, shared by every connection, instead of one each.

asyncio's TLS layer (`asyncio.sslproto.SSLProtocol`, Python 3.11+) gives each connection a receive
buffer of `SSLProtocol.max_size` bytes: a selector loop reads the socket into it (`get_buffer`) and
its content is copied into OpenSSL's input BIO right away, in the same callback (`buffer_updated`).
Nothing stays in it between two callbacks and a loop runs one callback at a time, so the connections
of one loop can share a buffer: an idle connection then costs 16 KiB less (the fetcher's
`max_size`), 320 MB for 10,000 inboxes of two connections.

The decoded peer certificate that asyncio keeps for `get_extra_info("peercert")` (a dict of ~1.4 KiB
per connection) goes too; `get_extra_info("ssl_object").getpeercert()` still gives it.

Both reach into asyncio's private attributes; when they are not there (another Python, another event
loop: a proactor keeps the buffer across callbacks, uvloop has its own TLS) the connection keeps its
own buffer and nothing breaks.
"""

from __future__ import annotations

import asyncio
import weakref

_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[bytearray, memoryview]] = (
    weakref.WeakKeyDictionary()
)


def share_read_buffer(transport: asyncio.BaseTransport) -> bool:
    """Point the TLS protocol under `transport` at its loop's shared receive buffer; True when done."""
    proto = getattr(transport, "_ssl_protocol", None)
    own = getattr(proto, "_ssl_buffer", None)
    if proto is None or not isinstance(own, bytearray) or not hasattr(proto, "_ssl_buffer_view"):
        return False
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return False
    shared = _shared.get(loop)
    if shared is None or len(shared[0]) < len(own):
        buf = bytearray(len(own))
        shared = (buf, memoryview(buf))
        _shared[loop] = shared
    proto._ssl_buffer, proto._ssl_buffer_view = shared
    extra = getattr(proto, "_extra", None)
    if isinstance(extra, dict):
        extra.pop("peercert", None)
    return True
