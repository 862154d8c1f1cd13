"""Framework integrations, installed as `ledger.adapters`.

Adapters for Lightning, the Hugging Face Trainer, Accelerate and
torch.distributed live here. Each framework is an optional extra: an adapter
imports its framework only when used, so `ledger` never requires one.
"""
