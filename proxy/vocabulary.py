"""The HTTP vocabulary both sides of the proxy share, declared once.

Owns the RFC facts that the client side (http1.py, connection.py, writer.py), the outgoing side
(backends/) and the SCF codec (scf/) all apply: which methods are idempotent, which fields are
hop-by-hop, which statuses carry no body, the token grammar of field names, and the SCF size
quota. A leaf: it imports nothing of the proxy, holds only constants, and does no work.
"""

from __future__ import annotations

import re
from typing import Final

#: RFC 9110 §9.2.2: methods whose repetition has the same intended effect; only these may be
#: sent again automatically ("A proxy MUST NOT automatically retry non-idempotent requests")
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

#: RFC 9110 §8.6: methods that define a meaning for content; sent without a body they still say
#: ``Content-Length: 0``
CONTENT_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})

#: Connection-specific fields never forwarded (RFC 9110 §7.6.1; RFC 9112 §7.1 for TE/Trailer
#: as framing; Proxy-Connection and Keep-Alive are the common non-standard spellings), plus
#: ``HTTP2-Settings``, which only means something with an ``Upgrade: h2c`` (RFC 7540 §3.2.1)
#: that we never forward.
HOP_BY_HOP: Final[frozenset[str]] = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization", "http2-settings",
})

#: Framing fields: whoever writes a message computes them (RFC 9110 §8.6, RFC 9112 §6).
FRAMING: Final = frozenset({"content-length", "transfer-encoding"})

#: Fields a response from a backend (an upstream or a function) never passes on: hop-by-hop,
#: framing (the writer frames), and ``Date``/``Server``, which the writer always sends itself
#: (nginx's proxy_hide_header default; two Date fields would be invalid, RFC 9110 §6.6.1).
RESPONSE_DROPPED: Final = HOP_BY_HOP | FRAMING | {"date", "server"}

#: Statuses whose responses never carry content (RFC 9110 §6.4.1): 1xx, 204 and 304, whatever
#: their header fields say.
NO_BODY_STATUSES: Final = frozenset({204, 304}) | frozenset(range(100, 200))

#: RFC 9110 §5.6.2 token (field names, methods, transfer codings), as bytes and as text
TOKEN_BYTES: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TOKEN: Final = re.compile(TOKEN_BYTES.decode("ascii"))

#: SCF's quota for a synchronous invocation, each way: the event and the result
#: (clb-scf-facts.md §2.2)
SCF_PAYLOAD_LIMIT: Final = 6 * 1024 * 1024
