"""The reproduction study of the paper's comparisons (scripts/reproduce.py)."""
