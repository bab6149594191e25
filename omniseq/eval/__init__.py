"""Evaluation: analysers read attributes back from media; metrics score them per direction (issue 9)."""
