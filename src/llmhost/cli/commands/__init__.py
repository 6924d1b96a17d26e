"""One module per ``llm`` command; each exposes ``HELP`` and ``command``."""
