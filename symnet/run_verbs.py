"""Verbs that compile and run models: train, eval, run, compile, cache."""
VERBS = {}
