"""State: flatten a training state into manifest nodes and back (layer 3).

Uses history (records) and objects (the store); never pickle, never code
execution from stored bytes.
"""
