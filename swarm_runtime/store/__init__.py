"""The only writer of state files: atomic JSON under a lock, JSONL appends, the event log,
the pause switch, the execution token, the checks that keep other users of the machine
from redirecting or reading any of them, the failpoints that test crash safety, and the
count of every fsync by what it made durable (durability)."""
