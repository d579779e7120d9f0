"""A throwaway agent for the DoS experiments in this folder: a ``publish_linear`` model (8x8 px, 2 classes),
an empty data folder in a temporary directory, and a tokens file with a read token (``r`` x 32) and a write
token (``w`` x 32). It prints ``up`` once serving, serves for SECONDS, then exits. The other scripts start it
themselves; to run it alone, from the repository root:

    .venv/bin/python scripts/experiments/dos/dos_agent.py --port 53645 --seconds 60
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from agent.config import AgentConfig
from agent.security import ServerSecurity
from agent.service import create_server
from agent.testing import publish_linear

READ_TOKEN, WRITE_TOKEN = "r" * 32, "w" * 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="shortlist-dos-"))
    publish_linear(d / "models", size=(8, 8), dim=16, classes=["a", "b"], seed=0)
    tokens = d / "tokens"
    tokens.write_text(f"read:{READ_TOKEN}\nwrite:{WRITE_TOKEN}\n")
    tokens.chmod(0o600)
    config = AgentConfig(d / "data", d / "models", port=args.port, use_cuda=False,
                         security=ServerSecurity(tokens=tokens))
    server, _port, _agent = create_server(config)
    print("up", flush=True)
    time.sleep(args.seconds)
    server.stop(0)


if __name__ == "__main__":
    main()
