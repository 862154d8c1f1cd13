"""Interop: importing other tools' checkpoints into a ledger and exporting commits as files other tools load."""
