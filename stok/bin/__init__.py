"""Command-line entry points, one module per tool (``python -m stok.bin.<tool>``)."""
