"""Phase 1: the safety gateway that checks the exact text that will run (its rules, and the
folding that undoes disguised text first), the screen for text inserted from earlier model
output, and the policy and runner for local commands (an argv allowlist, no shell, inside
the sandbox)."""
