"""The httpx engine: asyncio, one coroutine per request, timestamps at the socket."""
