"""HTTP endpoints (thin): each parses, calls the pipeline, renders."""
