"""specdistill: distil small language models that their teachers accept as speculative drafters."""

__version__ = "0.1.0"
