"""Evaluation (numpy only): the papers' manipulation protocol, baselines, conditional
similarity, and contact sheets. Not imported by the runtime's search path."""
