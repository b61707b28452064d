"""The core every part of the farm may import: settings, states, printer models, the HTTP
client, design inspection. It imports nothing else of the project."""

import sys

# httpx imports its command-line client (click, rich, pygments) whenever they are installed, and
# typer installs them: 5.7 MB of every process's RSS, a Raspberry Pi agent's included. Nothing
# here runs httpx's CLI. None in sys.modules makes an import fail (the import system's documented
# rule), which httpx expects: its `main` then only says how to install the CLI.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: blocked, as above
