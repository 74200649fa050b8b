"""medrt: a medical LLM runtime. See README.md."""
