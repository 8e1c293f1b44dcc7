"""Turns one sequence's generated token ids into text as they arrive, and finds its stop strings.

The engine owns one `IncrementalDetokenizer` per sequence: `add_token` after each sampled token,
`take_delta` when it builds an output. Decoding works on a short window of ids:

    ids:  ... prompt context | generated ...
              ^prefix_offset   ^read_offset: text up to here is settled (ends on a whole character)
    new text = decode(ids[prefix_offset:]) minus decode(ids[prefix_offset:read_offset])

so each step decodes a handful of tokens, and the first output tokens decode in the prompt's context.
"""

from __future__ import annotations

from tachyon.sampling_params import SamplingParams

PROMPT_CONTEXT_TOKENS = 5
INCOMPLETE = "\ufffd"  # what the tokenizer decodes an unfinished UTF-8 character to


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._tokenizer = tokenizer
        self._skip_special = params.skip_special_tokens
        self._stops = params.stop
        self._include_stop = params.include_stop_str_in_output
        context = prompt_token_ids[-PROMPT_CONTEXT_TOKENS:]
        context_text = self._decode(context)
        if context_text.endswith(INCOMPLETE):  # a prompt ending mid-character: decode the output alone
            context, context_text = [], ""
        self._ids = list(context)
        self._prefix_offset, self._read_offset = 0, len(context)
        self._prefix_text = context_text  # decode(ids[prefix_offset:read_offset])
        self._text = ""  # settled output text, cut at the stop string once one matched
        self._unsettled = ""  # text after read_offset that still ends in an unfinished character
        self._num_searched = 0  # characters of the output already searched for stop strings
        self._num_sent = 0  # characters of the output handed out by take_delta
        self.matched_stop: str | None = None

    @property
    def output_text(self) -> str:
        """The decoded output so far (cut at a matched stop string); mid-stream it may end in an
        unfinished character, which take_delta holds back."""
        return self._text + self._unsettled

    def add_token(self, token_id: int) -> bool:
        """Append one generated token; True if a stop string matched (output_text is then cut,
        `matched_stop` names it, and the sequence is over: add no more tokens)."""
        self._ids.append(token_id)
        new_text = self._decode(self._ids[self._prefix_offset :])[len(self._prefix_text) :]
        if new_text and not new_text.endswith(INCOMPLETE):
            self._text += new_text
            self._unsettled = ""
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        else:
            self._unsettled = new_text
        return self._find_stop()

    def take_delta(self, finished: bool) -> str:
        """Output text added since the last call. Until `finished` it holds back an unfinished
        character and any tail that may still grow into a stop string."""
        if finished:
            end = len(self.output_text)
        else:
            complete = self._complete_text()
            end = len(complete) - self._stop_prefix_len(complete)
        delta = self.output_text[self._num_sent : end]
        self._num_sent = max(self._num_sent, end)
        return delta

    def _complete_text(self) -> str:
        """The output up to its last whole character: an unfinished one decodes to one INCOMPLETE
        at the very end, and nothing before it can change any more."""
        return self._text + self._unsettled[:-1] if self._unsettled else self._text

    def _find_stop(self) -> bool:
        """Search the text added since the last search (plus a stop's length of overlap); on a
        match cut the output there. Of several matches the first to complete wins."""
        text = self._complete_text()
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stops:
            start = text.find(stop, max(0, self._num_searched - len(stop) + 1))
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        self._num_searched = len(text)
        if best is None:
            return False
        end, start, self.matched_stop = best
        self._text, self._unsettled = text[: end if self._include_stop else start], ""
        return True

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)
