"""Objects: hashing, codecs, packs and the object store (layer 5; uses nothing above)."""
