"""`tachyon eval http://HOST:PORT ...`: evaluation against an OpenAI-compatible server (tachyon serve, vLLM).

Only the HTTP API is used: token ids go in as the prompt (so the split into context and continuation is the
same as in-process), a loglikelihood comes from vLLM's echo of prompt logprobs (`echo`, `max_tokens=0`,
`logprobs=1`) and greedy generation from `temperature=0`. Tokenization uses the server's POST /tokenize and
/detokenize, so no local copy of the model is needed. Set $OPENAI_API_KEY for a server started with --api-key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import httpx
from tqdm import tqdm

from tachyon.evals.eval_model import Loglikelihood

PROMPTS_PER_REQUEST = 64  # the server batches the prompts of one request together
TIMEOUT_S = 600.0


class ServerModel:
    def __init__(self, url: str, model: str | None = None, api_key: str | None = None) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        self.http = httpx.Client(timeout=TIMEOUT_S, headers={"Authorization": f"Bearer {key}"} if key else {})
        card = self._models(model)
        self.name = card["id"]
        self.max_model_len = int(card["max_model_len"])
        self.tokenizer = ServerTokenizer(self)

    def _models(self, model: str | None) -> dict:
        cards = self.post_json("/v1/models", None)["data"]
        if model is None:
            return cards[0]
        for card in cards:
            if card["id"] == model:
                return card
        raise ValueError(f"{self.url} serves {[c['id'] for c in cards]}, not {model!r}")

    def get_tokenizer(self) -> ServerTokenizer:
        return self.tokenizer

    def score(
        self, prompts: Sequence[list[int]], num_scored: Sequence[int], use_tqdm: bool = False
    ) -> list[Loglikelihood]:
        body = {"max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0.0}
        choices = self._complete(prompts, body, use_tqdm)
        results = []
        for n, choice in zip(num_scored, choices):
            block = choice["logprobs"]
            picked = block["token_logprobs"][-n:]
            tops = block["top_logprobs"][-n:]
            # the chosen token is greedy when nothing scored higher at its position
            greedy = all(lp >= max(top.values()) for lp, top in zip(picked, tops))
            results.append(Loglikelihood(sum(picked), greedy))
        return results

    def generate_greedy(
        self, prompts: Sequence[list[int]], max_tokens: int, stop: Sequence[str], use_tqdm: bool = False
    ) -> list[str]:
        body = {"max_tokens": max_tokens, "temperature": 0.0, "stop": [s for s in stop if s] or None}
        return [choice["text"] for choice in self._complete(prompts, body, use_tqdm)]

    def _complete(self, prompts: Sequence[list[int]], body: dict, use_tqdm: bool) -> list[dict]:
        """POST /v1/completions in chunks of token-id prompts; the choices in prompt order."""
        choices: list[dict] = []
        with tqdm(total=len(prompts), desc=f"{self.url}", unit="req", disable=not use_tqdm) as bar:
            for start in range(0, len(prompts), PROMPTS_PER_REQUEST):
                chunk = [list(p) for p in prompts[start : start + PROMPTS_PER_REQUEST]]
                reply = self.post_json("/v1/completions", {**body, "model": self.name, "prompt": chunk})
                choices += sorted(reply["choices"], key=lambda c: c["index"])
                bar.update(len(chunk))
        return choices

    def post_json(self, path: str, body: dict | None) -> dict:
        """GET (body None) or POST one JSON request; a refused or failed request is a ValueError naming it."""
        try:
            r = self.http.get(self.url + path) if body is None else self.http.post(self.url + path, json=body)
        except httpx.HTTPError as e:
            raise ValueError(f"cannot reach {self.url}{path}: {e}") from e
        if r.status_code != 200:
            raise ValueError(f"{self.url}{path} answered {r.status_code}: {r.text[:500]}")
        return r.json()


class ServerTokenizer:
    """The few tokenizer calls evaluation makes, answered by the server's /tokenize and /detokenize. The BOS
    token is known only when the tokenizer adds one (the one case where evaluation needs it)."""

    def __init__(self, server: ServerModel) -> None:
        self.server = server
        with_special, plain = self.encode("a", add_special_tokens=True), self.encode("a", add_special_tokens=False)
        adds_bos = len(with_special) == len(plain) + 1 and with_special[1:] == plain
        self.bos_token_id = with_special[0] if adds_bos else None
        self.bos_token = self.decode([self.bos_token_id]) if adds_bos else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        body = {"model": self.server.name, "prompt": text, "add_special_tokens": add_special_tokens}
        return self.server.post_json("/tokenize", body)["tokens"]

    def decode(self, token_ids: list[int]) -> str:
        return self.server.post_json("/detokenize", {"model": self.server.name, "tokens": token_ids})["prompt"]
