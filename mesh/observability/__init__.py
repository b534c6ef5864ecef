"""What the framework measures and records for every engine: metrics (:mod:`.metrics`) and
traces (:mod:`.tracing`)."""
