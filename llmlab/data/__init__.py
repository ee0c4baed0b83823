"""Data: corpora, token shards, resumable loaders."""
