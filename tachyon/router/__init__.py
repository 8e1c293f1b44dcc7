"""`tachyon router`: an OpenAI-API reverse proxy in front of `tachyon serve` instances, balancing
identical replicas or splitting each request between a prefill and a decode instance (docs/router.md)."""
