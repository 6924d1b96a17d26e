"""``python -m llmhost.daemon``: the daemon in the foreground (what ``llm serve`` runs)."""

import sys

from llmhost.config import Settings
from llmhost.daemon.serve import serve
from llmhost.errors import ConfigError

try:
    serve(Settings.from_env())
except ConfigError as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(1)
