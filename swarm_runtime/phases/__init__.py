"""What happens to a task between claim and reward: intent and decomposition, tool-first
routing and its skills, the composed prompt, the critic, the quality gate and the rewards."""
