"""`python swarm.py`: the execution API (/cycle, /plan, /status) on 127.0.0.1."""

import sys

from swarm_runtime.launch import swarm as main

if __name__ == "__main__":
    sys.exit(main())
