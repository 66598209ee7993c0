"""Phase 1: the safety gateway that checks the exact text that will run, and the policy and
runner for local commands (an argv allowlist, no shell, inside the sandbox)."""
