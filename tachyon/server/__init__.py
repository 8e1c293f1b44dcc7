"""OpenAI-compatible HTTP server over `AsyncLLMEngine` (`tachyon serve`): completions, chat,
tokenize, models, health and Prometheus metrics."""
