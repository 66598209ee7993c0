"""`python worker.py`: the worker, which drives each task of queue.json through its lifecycle."""

import sys

from swarm_runtime.worker import main

if __name__ == "__main__":
    sys.exit(main())
