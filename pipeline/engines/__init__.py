"""Model engines: the engine protocol, request cache, fake, vLLM, OpenAI-compatible, embedded."""
