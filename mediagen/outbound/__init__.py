"""Every HTTP call mediagen makes to the outside: Replicate's API, output downloads, client
webhooks. One client per process and one set of rules, tested once:

- **A total deadline** per exchange (resolve, connect, send, headers and body together), so no
  peer can hold a caller by answering slowly.
- **Bodies read raw and capped**: nothing is decompressed (we ask for `identity`; a server that
  compresses anyway is read as it sent it), and no more than `max_bytes` is ever read.
- **Addresses checked and pinned** (`pin`): the host is resolved once, every address must be
  public by an explicit list that does not depend on the Python version (`_addresses`), and
  the request goes to exactly those addresses, with the original Host and SNI. Redirects are
  followed only where the caller allows them, each hop checked again.
- **No trace context to others**: with tracing on, a request carries `traceparent` (and the
  rest of the trace context) only when its policy says so (`trace_context`: our own Cog servers
  when COG_TRACE_CONTEXT is set); never to a client's webhook or file host, nor to Replicate.
- **What a status means** (`classify`): 2xx ok; 408, 425, 429, 5xx worth another try; the rest
  final; `Retry-After` in seconds or as an HTTP date (`retry_after`).

Errors are `mediagen.errors.OutboundError` (with `retryable`, `status`, `retry_after`) and its
`RefusedAddressError`; callers turn them into their own (a provider error, a delivery's next
attempt).
"""

from mediagen.outbound._addresses import is_public
from mediagen.outbound._client import Outbound, Policy, Reply, Stream
from mediagen.outbound._resolve import pinned_urls
from mediagen.outbound._rules import classify

__all__ = [
    "Outbound",
    "Policy",
    "Reply",
    "Stream",
    "classify",
    "is_public",
    "pinned_urls",
]
