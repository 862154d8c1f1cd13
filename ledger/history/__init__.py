"""History: commits, refs, the event log, revisions (layer 4; uses objects only)."""
