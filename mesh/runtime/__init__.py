"""Nodes, actor pools and their supervision."""
