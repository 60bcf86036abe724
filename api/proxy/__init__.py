"""The LLM proxy's HTTP layer (the hot path, outside Django's request cycle).

app: ASGI dispatch, authentication, request checks · call: relaying one call, whole or
streamed · wire: ASGI helpers · errors: the providers' error shapes · server: the
uvicorn protocol that writes a whole response in one call. Policy (holds, records,
providers) lives in metering; this package frames requests and answers.
"""
