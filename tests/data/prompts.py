"""Prompts of mixed lengths (a few tokens to a few hundred) for end-to-end tests."""

_PARAGRAPH = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from those used for wine. Within fifty years "
    "presses were working in more than two hundred cities, and the price of books fell so far that reading "
    "spread from monasteries and universities to merchants and craftsmen. Scholars argue about how quickly the "
    "change came, but few doubt that cheap printed pages helped the Reformation, the scientific revolution and "
    "the rise of newspapers. "
)

PROMPTS = [
    "Hello",
    "The capital of France is",
    "Write a haiku about autumn leaves.",
    "def fibonacci(n):",
    "List three prime numbers:",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Translate to French: The cat is sleeping on the warm windowsill.",
    "Q: What is the boiling point of water at sea level in Celsius?\nA:",
    _PARAGRAPH + "Summarize the paragraph above in one sentence:",
    "1, 2, 3, 4, 5,",
    "Explain why the sky is blue to a five-year-old.",
    _PARAGRAPH * 2 + "What did Gutenberg combine?",
    "The quick brown fox",
    "import numpy as np\nimport torch\n\ndef softmax(x):\n    ",
    "Dear hiring manager, I am writing to apply for the position of",
    "In 1969, the first humans landed on the Moon. The mission was called",
]
