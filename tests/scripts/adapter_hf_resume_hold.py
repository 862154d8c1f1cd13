"""Write ``LedgerCallback.resume("HEAD")``'s checkpoint folder, print its path, then wait to be killed.

Usage: adapter_hf_resume_hold.py LEDGER_DIR

Prints ``ready``, then the path of the Trainer-layout folder, then sleeps: the
test SIGKILLs it, as a crash between ``resume`` and the end of training would.
"""

from __future__ import annotations

import sys
import time
import warnings

from ledger.adapters.transformers import LedgerCallback

warnings.filterwarnings("ignore")


def main() -> None:
    cb = LedgerCallback(sys.argv[1])
    print("ready", flush=True)
    print(cb.resume("HEAD"), flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
