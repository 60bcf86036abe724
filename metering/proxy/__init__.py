"""The proxy engine: provider adapters, stream handling and who is calling (callers).

HTTP framing lives in api.proxy; this package knows providers, not sockets.
"""
