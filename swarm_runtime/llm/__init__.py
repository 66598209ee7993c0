"""The guarded LLM path: providers (and the offline model), prices, the rate limit, the budget
reserved before a call and settled after it, and the audited wrapper that puts them together."""
