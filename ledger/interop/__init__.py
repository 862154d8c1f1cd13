"""Interop: moving training state between a ledger and the files other tools load.

This package owns the export formats (``ledger.interop.export``: ``hf``,
``peft``, ``torch``, ``lightning``, ``dcp``, ``safetensors``) and the
importers (``ledger.interop.imports``). It is a layer below ``ledger.api``:
it works on small Protocols that ``ledger.Ledger`` satisfies
(:class:`ledger.interop.source.CommitReader`) and must never import
``ledger.api`` or ``ledger.cli``, nor write inside a ledger's directory.
"""
