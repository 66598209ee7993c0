"""The only writer of state files: atomic JSON under a lock, JSONL appends, the event log,
the pause switch, the execution token, the checks that keep other users of the machine
from redirecting or reading any of them, and the failpoints that test crash safety."""
