"""State: flatten a training state into manifest nodes and back (layer 3).

Uses the manifest records (``ledger.manifest``) and objects (the store),
never history; never pickle, never code execution from stored bytes.
"""
