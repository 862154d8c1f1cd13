"""Framework integrations, installed as `ledger.adapters`.

- ``ledger.adapters.torch``: ``Checkpointer`` for hand-written loops (no extra).
- ``ledger.adapters.lightning``: ``LedgerCheckpoint`` and ``LedgerCheckpointIO`` (extra ``lightning``).
- ``ledger.adapters.transformers``: ``LedgerCallback`` for the HF Trainer (extra ``transformers``).
- ``ledger.adapters.accelerate``: ``save_state``/``load_state`` (extra ``accelerate``).
- ``ledger.adapters.distributed``: multi-process commits and resharding (no extra).

Each framework is an optional extra: importing an adapter without its
framework raises ``MissingExtraError`` naming the extra to install, and
``ledger`` itself never imports a framework. This package must stay empty of
imports so that ``import ledger.adapters`` costs nothing.
"""
