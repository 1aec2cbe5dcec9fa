"""FT Studio: full fine-tuning of pre-trained transformers, from a desktop app or the terminal."""
__version__ = "0.1.0"
