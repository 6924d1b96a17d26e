"""Shared test helpers, one place each:

- ``models``: where the real test models are (skip, or fail with LLMHOST_REQUIRE_TEST_MODELS=1);
- ``tiny_gguf``: tiny GGUF files, with SmolLM2's tokenizer or a byte-level one that needs no model;
- ``daemon_app``: the daemon's app on a test server with fake runners (route tests);
- ``daemon_process``: a real ``python -m llmhost.daemon`` (end-to-end tests and benchmarks);
- ``runner_process`` / ``engine_harness``: a real runner process / an in-process engine;
- ``fake_daemon``: canned Ollama-shaped answers for the API client and the CLI;
- ``waiting``: polling with a deadline instead of sleeping; ``processes``: free ports, certain stops;
- ``fixtures``, ``tmpfs``: pytest fixtures to import into a conftest.py.
"""
