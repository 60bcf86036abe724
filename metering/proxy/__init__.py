"""The proxy engine: provider adapters, stream handling and the caller context cache.

HTTP framing lives in api.proxy; this package knows providers, not sockets.
"""
