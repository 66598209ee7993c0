"""The only writer of state files: atomic JSON under a lock, JSONL appends, the event log,
the pause switch, the execution token and the failpoints that test crash safety."""
