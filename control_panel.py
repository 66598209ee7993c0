"""`python control_panel.py`: the operator's page on 127.0.0.1."""

import sys

from swarm_runtime.launch import control_panel as main

if __name__ == "__main__":
    sys.exit(main())
