"""queue.json: transactions (add, claim under a lease, heartbeat, finish, requeue, cancel,
plan), the in-memory state with its indexes, the pure rules, the journal of a large queue,
and the presence files that show idle workers alive."""
