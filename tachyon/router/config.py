"""`RouterConfig`: the router's flags, checked where they are built so that a mistake names its flag.
`tachyon router` (cli.py) builds it; app.py runs it."""

from __future__ import annotations

from dataclasses import dataclass

from tachyon.router.policy import POLICIES


@dataclass(frozen=True)
class RouterConfig:
    replicas: tuple[str, ...] = ()
    prefill: tuple[str, ...] = ()
    decode: tuple[str, ...] = ()
    policy: str = "least-outstanding"
    prefix_chars: int = 512
    prefix_imbalance: int = 4
    health_interval: float = 2.0
    request_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.replicas and (self.prefill or self.decode):
            raise ValueError("--replica cannot be combined with --prefill/--decode: pick one mode")
        if not self.replicas and not (self.prefill and self.decode):
            raise ValueError(
                "give --replica URL [URL ...] (balanced replicas), "
                "or both --prefill URL [URL ...] and --decode URL [URL ...] (disaggregated prefill/decode)"
            )
        for flag, urls in (("--replica", self.replicas), ("--prefill", self.prefill), ("--decode", self.decode)):
            _check_urls(flag, urls)
        if self.policy not in POLICIES:
            raise ValueError(f"--policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.prefix_chars < 1:
            raise ValueError(f"--prefix-chars must be at least 1, got {self.prefix_chars}")
        if self.prefix_imbalance < 0:
            raise ValueError(f"--prefix-imbalance must not be negative, got {self.prefix_imbalance}")
        if self.health_interval <= 0:
            raise ValueError(f"--health-interval must be positive seconds, got {self.health_interval}")
        if self.request_timeout <= 0:
            raise ValueError(f"--request-timeout must be positive seconds, got {self.request_timeout}")

    @property
    def disaggregated(self) -> bool:
        return bool(self.prefill)


def normalize_url(url: str) -> str:
    """http://host:8000/v1/ -> http://host:8000"""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def _check_urls(flag: str, urls: tuple[str, ...]) -> None:
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{flag} URLs must start with http:// or https://, got {url!r}")
    if len(set(urls)) != len(urls):
        raise ValueError(f"{flag} lists an instance twice: {' '.join(urls)}")
