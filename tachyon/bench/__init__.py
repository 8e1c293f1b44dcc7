"""`tachyon bench`: a load benchmark for any OpenAI-compatible server (GuideLLM / `vllm bench serve`
class). Uses only the HTTP API. Flow: cli -> runner (data, profiles) -> scheduler -> client ->
metrics -> results/report. See docs/bench.md."""
