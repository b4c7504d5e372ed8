"""Test helpers shipped with charter: an OpenAI-compatible server for tests, benchmarks and
offline dry runs (needs ``aiohttp``, in the ``dev`` extra)."""
