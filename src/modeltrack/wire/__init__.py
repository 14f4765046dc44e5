"""Wire decoders, byte-level and incremental: SSE, Gemini's JSON array, AWS event-stream, content codings."""
