"""`python worker.py`: the worker, which drives each task of queue.json through its lifecycle;
`python worker.py COMMAND` operates the runtime as the control panel does (see --help)."""

import sys

from swarm_runtime.launch import worker as main

if __name__ == "__main__":
    sys.exit(main())
