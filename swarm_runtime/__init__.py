"""swarm-runtime: a local runtime for LLM agent tasks.

Layers point one way (an import-linter contract in pyproject.toml enforces it):

    contract            statuses, transitions, file and field names, every file and wire model
    web                 what both servers share: the WSGI server, JSON errors, loopback URLs
    store               the only writer of state files: atomic JSON, JSONL appends, events
    queue               queue.json transactions, leases, the journal, worker presence
    safety | llm | phases
                        the safety gateway and local-command policy; the guarded LLM path;
                        intent, decomposition, routing, prompts, review, quality gate, rewards
    worker | api | panel
                        the three processes: worker.py, swarm.py, control_panel.py

`errors`, `settings` and `processes` sit beside `contract` and import none of the layers.
"""
