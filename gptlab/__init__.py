"""gptlab: prepare text, train GPT-2-style models, evaluate, sample, benchmark."""

__version__ = "0.1.0"
