"""Verbs that show models to people: graph, show, export."""
VERBS = {}
