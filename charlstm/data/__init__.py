"""Text in: corpus sources (a file, a folder, a glob, a known name), the vocabulary with byte
fallback, the token cache, and the contiguous stream batches that training reads. No model here."""
